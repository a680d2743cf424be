"""The bad-input corpus under tests/bad_inputs/: every file fails safely.

A case file starts with comment lines: `# expect: TEXT` (each must appear in the error),
`# args: ...` (extra command-line arguments) and `# where: TEXT` (what the error must name as the
source, when it is not the case file itself: a flag, or --set).
- jobs/*.toml are job files; clusters/*.toml are cluster files tried with base_job.toml. Each must
  be refused by `launch submit` with exit 2 and ONE line `launch: error: SOURCE: KEY: message`,
  no traceback, and no run directory left behind.
- runs/*.toml pass every check but fail inside the job: exit 1, and `launch status` names the
  rank and the user's exception.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from tests.helpers.launch import REPO, run_launch

CORPUS = Path(__file__).parent / "bad_inputs"


def header(path: Path, key: str) -> list[str]:
    values = []
    for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
        if line.startswith(f"# {key}: "):
            values.append(line.split(": ", 1)[1])
    return values


def cases(folder: str) -> list[Path]:
    return sorted([*(CORPUS / folder).glob("*.toml"), *(CORPUS / folder).glob("*.yaml")])


def test_the_corpus_has_at_least_fifty_cases() -> None:
    refused, failing = cases("jobs") + cases("clusters"), cases("runs")
    assert len(refused) + len(failing) >= 50
    for path in refused + failing:
        assert header(path, "expect"), f"{path.name} says nothing about the error it expects"


def check_refused(result, case: Path, tmp_path: Path) -> None:  # noqa: ANN001
    err = result.stderr
    assert result.returncode == 2, f"{case.name}: exit {result.returncode}\n{err}"
    assert "Traceback" not in err + result.stdout, f"{case.name}: a traceback\n{err}"
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"{case.name}: the error is {len(lines)} lines\n{err}"
    line = lines[0]
    assert line.startswith("launch: error: "), line
    where = header(case, "where") or [str(case.relative_to(REPO))]
    for text in where:
        assert text in line, f"{case.name}: the error does not name {text!r}: {line}"
    for text in header(case, "expect"):
        assert text in line, f"{case.name}: {text!r} not in: {line}"
    assert not (tmp_path / "runs").exists(), f"{case.name}: a refused submission left a run directory"


@pytest.mark.parametrize("case", cases("jobs"), ids=lambda p: p.stem)
def test_bad_job_file_is_refused_in_one_line(case: Path, tmp_path: Path) -> None:
    args = shlex.split(" ".join(header(case, "args")))
    result = run_launch("submit", str(case.relative_to(REPO)), "--runs-dir", str(tmp_path / "runs"), *args)
    check_refused(result, case, tmp_path)


@pytest.mark.parametrize("case", cases("clusters"), ids=lambda p: p.stem)
def test_bad_cluster_file_is_refused_in_one_line(case: Path, tmp_path: Path) -> None:
    args = shlex.split(" ".join(header(case, "args")))
    result = run_launch("submit", "tests/bad_inputs/base_job.toml", "--cluster-file", str(case.relative_to(REPO)),
                        "--runs-dir", str(tmp_path / "runs"), *args)
    check_refused(result, case, tmp_path)


@pytest.mark.multiprocess
@pytest.mark.parametrize("case", cases("runs"), ids=lambda p: p.stem)
def test_job_that_fails_inside_reports_the_rank_and_the_users_error(case: Path, tmp_path: Path) -> None:
    result = run_launch("submit", str(case.relative_to(REPO)), "--runs-dir", str(tmp_path / "runs"),
                        "--set", f"data.init_args.data_dir={tmp_path / 'data'}", "--follow", timeout=180)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr.splitlines()[-1]
    run_dir = Path(result.stdout.strip().splitlines()[-1])
    status = run_launch("status", str(run_dir), "--json")
    assert status.returncode == 0, status.stderr
    info = json.loads(status.stdout)
    assert info["state"] == "failed" and info["failed_rank"] is not None
    assert info["error"].startswith(f"rank {info['failed_rank']} ("), info["error"]
    for text in header(case, "expect"):
        assert text in info["error"], info["error"]
    # the human view says the same, in one line
    human = run_launch("status", str(run_dir)).stdout
    assert f"error     {info['error']}" in human
