"""The shape of `launcher/` that the README's layout section promises, checked on the source: module
size, the one-way imports, and event names spelled only in lifecycle.py. Pure and fast."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from launcher import events, records

LAUNCHER = Path(__file__).resolve().parents[1] / "launcher"
MODULES = sorted(LAUNCHER.rglob("*.py"))
MAX_LINES = 400


def imported(path: Path) -> set[str]:
    """Every module `path` imports (absolute names; relative imports are not used in launcher/)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(LAUNCHER)))
def test_no_module_is_over_the_size_limit(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(LAUNCHER)}: {lines} lines"


def test_backends_import_nothing_from_runtime_or_entry() -> None:
    for path in (LAUNCHER / "backends").glob("*.py"):
        wrong = {n for n in imported(path) if n.startswith(("launcher.runtime", "launcher.entry"))}
        assert not wrong, f"{path.name} imports {sorted(wrong)}"


def test_nothing_imports_the_cli() -> None:
    for path in MODULES:
        if path.name not in ("cli.py", "cli_args.py"):
            assert not {n for n in imported(path) if n.startswith("launcher.cli")}, path.name


def literal_event_uses(tree: ast.AST) -> list[int]:
    """Lines that spell an event as a string: `{"event": "x"}`, `rec["event"] == "x"`, `event="x"`."""

    def is_event_key(node: ast.AST) -> bool:
        return (isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) and node.slice.value == "event") or (
            isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
            and node.args and isinstance(node.args[0], ast.Constant) and node.args[0].value == "event")

    def is_str(node: ast.AST) -> bool:
        return isinstance(node, ast.Constant) and isinstance(node.value, str)

    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            found += [node.lineno for k, v in zip(node.keys, node.values, strict=True)
                      if isinstance(k, ast.Constant) and k.value == "event" and is_str(v)]
        elif isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(is_event_key(s) for s in sides) and any(is_str(s) or (isinstance(s, ast.Tuple | ast.Set | ast.List)
                                                            and any(is_str(e) for e in s.elts)) for s in sides):
                found.append(node.lineno)
        elif isinstance(node, ast.keyword) and node.arg == "event" and is_str(node.value):
            found.append(node.value.lineno)
    return found


def test_event_names_are_spelled_only_in_lifecycle() -> None:
    spelled = {str(p.relative_to(LAUNCHER)): lines for p in MODULES if p.name != "lifecycle.py"
               if (lines := literal_event_uses(ast.parse(p.read_text())))}
    assert not spelled


def test_the_literal_check_finds_what_it_looks_for() -> None:
    src = 'a = {"event": "started"}\nif rec["event"] == "finished": pass\nif e.get("event") in ("x", "y"): pass\nf(event="z")\n'
    assert literal_event_uses(ast.parse(src)) == [1, 2, 3, 4]


def test_runtime_imports_nothing_from_backends_entry_tools_or_the_cli() -> None:
    # runtime/ is what runs inside a rank: it never reaches back up to what submits or watches runs
    for path in (LAUNCHER / "runtime").glob("*.py"):
        wrong = {n for n in imported(path) if n.startswith(("launcher.backends", "launcher.entry", "launcher.tools",
                                                              "launcher.cli"))}
        assert not wrong, f"runtime/{path.name} imports {sorted(wrong)}"


def test_only_the_cli_imports_the_web_page_and_the_page_imports_no_torch() -> None:
    """launch ui / report's libraries (Starlette, uvicorn, Plotly) stay out of every other command,
    and the page reads run directories without torch, Lightning or the rank's runtime."""
    web = ("launcher.ui", "starlette", "uvicorn", "plotly")
    for path in MODULES:
        inside = path.is_relative_to(LAUNCHER / "ui")
        if not inside and path.name != "cli.py":
            wrong = {n for n in imported(path) if n.startswith(web)}
            assert not wrong, f"{path.relative_to(LAUNCHER)} imports {sorted(wrong)}"
        if inside:
            wrong = {n for n in imported(path) if n.split(".")[0] in ("torch", "lightning", "pytorch_lightning")
                     or n.startswith(("launcher.runtime", "launcher.entry", "launcher.tools"))}
            assert not wrong, f"{path.relative_to(LAUNCHER)} imports {sorted(wrong)}"


def test_models_and_datamodules_never_import_launcher() -> None:
    # plain Lightning, to be copied into any project
    for folder in ("models", "datamodules"):
        for path in (LAUNCHER.parent / folder).rglob("*.py"):
            wrong = {n for n in imported(path) if n == "launcher" or n.startswith("launcher.")}
            assert not wrong, f"{folder}/{path.name} imports {sorted(wrong)}"


# Keys found only in the typed records of launcher/records.py (heartbeats, rank errors, alive
# markers, plan.json, slurm.json): read through the dataclasses' fields, never by string.
RECORD_ONLY_KEYS = {"progress_at", "beat_at", "slowest_step_s", "slurm_step", "stepped", "here_runner_pid",
                    "array_job_id", "traceback", "argv", "nodes", "job_id", "silent_s", "beating", "supervisor_pid",
                    "slurm_state", "completing_on_lost_nodes"}


def string_keyed_reads(tree: ast.AST, keys: set[str]) -> list[tuple[int, str]]:
    """`x["key"]` and `x.get("key")` reads of any of `keys`."""
    found = []
    for node in ast.walk(tree):
        if (isinstance(node, ast.Subscript) and isinstance(node.ctx, ast.Load) and isinstance(node.slice, ast.Constant)
                and node.slice.value in keys):
            found.append((node.lineno, node.slice.value))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
              and node.args and isinstance(node.args[0], ast.Constant) and node.args[0].value in keys):
            found.append((node.lineno, node.args[0].value))
    return found


def test_records_are_read_by_field_not_by_string_key() -> None:
    reads = {str(p.relative_to(LAUNCHER)): found for p in MODULES if p.name != "records.py"
             if (found := string_keyed_reads(ast.parse(p.read_text()), RECORD_ONLY_KEYS))}
    assert not reads


def test_the_string_key_check_finds_what_it_looks_for() -> None:
    src = 'a = beat["beat_at"]\nb = rec.get("slurm_step")\nc = beat.beat_at\nfields["beat_at"] = 1\n'
    assert string_keyed_reads(ast.parse(src), RECORD_ONLY_KEYS) == [(1, "beat_at"), (2, "slurm_step")]


# Field names of the event payloads (launcher/events.py) and progress.json that mean nothing else
# in launch (the shared ones, such as "step" or "epoch", are also checkpoint and config keys).
SHARED_KEYS = {"event", "time", "t", "backend", "profile", "step", "lr", "lr_key", "batch_size", "global_step",
               "epoch", "world_size", "metrics", "run_id", "code", "here", "pid", "host", "rank", "error", "output",
               "checkpoint", "count", "signal", "kind", "note", "stage", "attempt", "when", "run_dir", "sweep", "point"}


def test_events_are_read_as_typed_records() -> None:
    """Every reader in launch takes `RunDir.history()` (events.py's dataclasses, which have no
    string keys to read), never the raw `read_events()`; and no payload field is read by string."""
    raw = {str(p.relative_to(LAUNCHER)) for p in MODULES if p.name != "rundir.py" and "read_events(" in p.read_text()}
    assert not raw
    typed = set().union(*({f.name for f in dataclasses.fields(cls)} for cls in
                          [*events.PAYLOADS.values(), events.Dependency, records.Progress]))
    keys = typed - SHARED_KEYS
    assert {"signal_to_exit_s", "step_reached", "save_s", "interrupted", "cause"} <= keys
    reads = {str(p.relative_to(LAUNCHER)): found for p in MODULES if p.name not in ("events.py", "records.py")
             if (found := string_keyed_reads(ast.parse(p.read_text()), keys))}
    assert not reads


def test_every_event_field_a_writer_records_is_typed() -> None:
    """A key an `add_event` call writes that its payload class does not name would be read back
    as nothing: each call's keyword names are fields of its event's class."""
    missing = {}
    for path in MODULES:
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_event"
                    and node.args and isinstance(node.args[0], ast.Attribute) and node.args[0].value.id == "Event"):
                continue
            cls = events.PAYLOADS[events.Event[node.args[0].attr]]
            names = {f.name for f in dataclasses.fields(cls)}
            extra = {k.arg for k in node.keywords if k.arg is not None} - names
            if extra:
                missing[f"{path.relative_to(LAUNCHER)}:{node.lineno}"] = sorted(extra)
    assert not missing


def test_only_the_compat_door_imports_submitit() -> None:
    # submitit's private hooks and names are fenced in one version-checked module, like Lightning's
    users = {str(p.relative_to(LAUNCHER)) for p in MODULES if p.name != "submitit_compat.py"
             if {n for n in imported(p) if n == "submitit" or n.startswith("submitit.")}}
    assert not users
