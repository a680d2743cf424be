"""The job-file and profile key reference, generated from the schema (docs/reference.md), so that
the documentation of every key (type, default, bounds, its comment) cannot drift from the code."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import json
import tokenize
from typing import Any

from launcher.config import schema

# The job file's tables, in the order the docs show them: (TOML table, its dataclass).
JOB_TABLES: list[tuple[str, type]] = [
    ("job", schema.JobSection), ("model", schema.ComponentSection), ("data", schema.ComponentSection),
    ("trainer", schema.TrainerSection), ("resources", schema.ResourcesSection),
    ("checkpoint", schema.CheckpointSection), ("early_stopping", schema.EarlyStoppingSection),
    ("optimizer", schema.OptimizerSection), ("lr_scheduler", schema.SchedulerSection), ("swa", schema.SWASection),
    ("logging", schema.LoggingSection), ("logging.wandb", schema.WandbSection),
    ("logging.mlflow", schema.MLflowSection), ("performance", schema.PerformanceSection),
    ("strategy", schema.StrategySection), ("[callbacks]", schema.ComponentSection),
    ("[loggers]", schema.ComponentSection),
]
NESTED = (schema.WandbSection, schema.MLflowSection)  # their own tables, not a key of [logging]


def field_comments(cls: type) -> dict[str, str]:
    """Each field's comment in the source: the comment lines right above it and the one after it."""
    source = inspect.getsource(cls)
    lines = source.splitlines()
    trailing = {tok.start[0]: tok.string.lstrip("# ").strip()
                for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}
    found: dict[str, str] = {}
    for node in ast.parse(source).body[0].body:  # type: ignore[attr-defined]
        if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
            continue
        above, row = [], node.lineno - 2
        while row >= 0 and lines[row].strip().startswith("#"):
            above.insert(0, lines[row].strip().lstrip("# ").strip())
            row -= 1
        after = trailing.get(node.end_lineno or node.lineno, "")
        if after and lines[(node.end_lineno or node.lineno) - 1].strip().startswith("#"):
            after = ""  # a comment line of its own, already above the next field
        found[node.target.id] = " ".join(part for part in [*above, after] if part)
    return found


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value: Any = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "required"
    if value is None:
        return "unset"
    return f"`{json.dumps(value)}`"


def _bounds(f: dataclasses.Field) -> str:
    return "; ".join(b.message.replace("{value}: ", "").replace("{value}", "the value") for b in schema.bounds_of(f))


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def table(cls: type) -> str:
    """One Markdown table of a dataclass's keys: key, type, default, bounds, what it does."""
    comments = field_comments(cls)
    rows = ["| key | type | default | allowed | what it does |", "| --- | --- | --- | --- | --- |"]
    for f in dataclasses.fields(cls):
        if f.type in {c.__name__ for c in NESTED} | {f"{c.__name__} | None" for c in NESTED}:
            continue
        rows.append(f"| `{f.name}` | `{_cell(str(f.type))}` | {_cell(_default(f))} | {_cell(_bounds(f))} | "
                    f"{_cell(comments.get(f.name, ''))} |")
    return "\n".join(rows)


def job_reference() -> str:
    """Every table of the job file, each with its keys."""
    parts = []
    for name, cls in JOB_TABLES:
        heading = f"[{name}]" if not name.startswith("[") else f"[{name}] (repeatable)"
        doc = inspect.getdoc(cls) if cls.__doc__ and not cls.__doc__.startswith(f"{cls.__name__}(") else ""
        parts.append(f"### `{heading}`\n\n" + (f"{doc}\n\n" if doc else "") + table(cls))
    return "\n\n".join(parts)


def profile_reference() -> str:
    """The cluster profile's keys (a table of cluster.toml, or --set cluster.KEY=VALUE)."""
    return table(schema.ClusterProfile)
