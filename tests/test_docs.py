"""The documentation site builds strictly (a broken link or anchor, a page missing from the nav, a
generated marker left unfilled all fail), and the key reference is generated from the schema."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

from launcher.config import schema
from launcher.config.reference import JOB_TABLES, field_comments, job_reference, profile_reference

REPO = Path(__file__).resolve().parents[1]


def test_mkdocs_builds_the_site_strictly(tmp_path) -> None:
    # Never -q: MkDocs counts only the warnings it logs, so a quiet strict build passes broken links.
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                            cwd=REPO, capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    reference = (tmp_path / "site" / "reference" / "index.html").read_text()
    assert "generated:" not in reference
    assert "stall_timeout_s" in reference and "shorten_requeue_hold" in reference


def test_the_key_reference_lists_every_key_of_every_table() -> None:
    text = job_reference() + profile_reference()
    for _, cls in JOB_TABLES:
        for f in dataclasses.fields(cls):
            if f.name not in ("wandb", "mlflow"):
                assert f"| `{f.name}` |" in text, f"{cls.__name__}.{f.name}"
    for f in dataclasses.fields(schema.ClusterProfile):
        assert f"| `{f.name}` |" in profile_reference()
    assert {t for t, _ in JOB_TABLES} >= {f.name for f in dataclasses.fields(schema.JobConfig)} - {
        "callbacks", "loggers", "cluster", "run"}


def test_a_fields_comment_and_bounds_reach_the_reference() -> None:
    comments = field_comments(schema.JobSection)
    assert comments["stall_timeout_s"].startswith("A rank without progress")
    assert comments["seed"] == "seeds every rank (torch, numpy, python, DataLoader workers)"
    row = next(line for line in job_reference().splitlines() if line.startswith("| `stall_timeout_s` |"))
    assert "`120`" in row and "must be at least 10 seconds" in row
