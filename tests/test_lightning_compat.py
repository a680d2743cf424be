"""The one door to Lightning's private internals checks the versions it was written for."""

from __future__ import annotations

import ast

from tests.helpers.launch import REPO


def test_lightning_compat_refuses_versions_it_was_not_written_for() -> None:
    from launcher.runtime import lightning_compat as compat

    assert compat.version_problem() is None  # the pinned versions
    problem = compat.version_problem({"pytorch-lightning": "2.7.0", "torchmetrics": "1.9.1"})
    assert problem is not None and "\n" not in problem
    assert "pytorch-lightning 2.7.0 (needs 2.6.x)" in problem and "torchmetrics" not in problem
    assert "torchmetrics missing" in compat.version_problem({"pytorch-lightning": "2.6.0", "torchmetrics": None})


def test_no_module_but_the_compat_one_touches_lightning_or_torchmetrics_internals() -> None:
    """Every `x._name` attribute in launcher/ is on launch's own objects, or in lightning_compat and
    lightning_step_compat (Lightning's and torchmetrics' internals), torchrun_compat (torchrun's, which touches nothing
    of Lightning's), cpython_compat (CPython's: its fork guard, fork server and exit handlers) or
    ddp_compat (torch DDP's reducer: its gradient buckets)."""
    ours = {"self", "cls", "handler", "stream", "os", "sys"}
    found = []
    torchrun = (REPO / "launcher" / "entry" / "torchrun_compat.py").read_text()
    assert "lightning" not in torchrun.replace("lightning_compat", "") and "torchmetrics" not in torchrun
    for name in ("cpython_compat.py", "ddp_compat.py"):
        text = (REPO / "launcher" / "runtime" / name).read_text()
        assert "lightning" not in text.replace("lightning_compat", "") and "torchmetrics" not in text, name
    for path in sorted((REPO / "launcher").rglob("*.py")):
        if path.name in ("lightning_compat.py", "lightning_step_compat.py", "torchrun_compat.py", "cpython_compat.py",
                         "ddp_compat.py"):
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                base = node.value.id if isinstance(node.value, ast.Name) else None
                if base not in ours:
                    found.append(f"{path.relative_to(REPO)}:{node.lineno}: .{node.attr}")
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in (
                    "pytorch_lightning", "lightning_fabric", "torchmetrics"):
                found += [f"{path.relative_to(REPO)}:{node.lineno}: import {a.name}" for a in node.names
                          if a.name.startswith("_")]
    assert not found, "private Lightning/torchmetrics use outside the lightning compat modules:\n" + "\n".join(found)


def test_ddp_compat_falls_back_to_find_unused_parameters_on_a_torch_it_was_not_written_for(monkeypatch) -> None:
    """Either way DDP's buckets keep one layout: laid out once (ddp_compat), or never rebuilt."""
    import torch

    from launcher.runtime import ddp_compat
    from launcher.runtime.strategy import LaunchDDPStrategy

    assert ddp_compat.available()  # the pinned torch
    strategy = LaunchDDPStrategy()
    assert strategy.fix_layout and not strategy.finds_unused
    assert LaunchDDPStrategy(find_unused_parameters=True).finds_unused  # job.find_unused_parameters
    monkeypatch.setattr(torch, "__version__", "2.15.0")
    assert not ddp_compat.available()
    strategy = LaunchDDPStrategy()
    assert strategy.finds_unused and not strategy.fix_layout
    assert not LaunchDDPStrategy(fixed_buckets=False).finds_unused  # DDP's own rebuild, asked for
