"""Where a run's user code is imported from (the run's snapshot of it, else the submit directory)
and which Lightning it uses. Used by every rank and by the one-device tools (tune, predict,
export); imports no torch itself."""

from __future__ import annotations

import sys
from pathlib import Path

from launcher.config import JobConfig
from launcher.config.components import (
    LIGHTNING_ENV,
    NAMESPACES,
    job_components,
    lightning_in_use,
    mixed_lightning_message,
)
from launcher.rundir import RunDir


def import_user_code(cfg: JobConfig, run: RunDir) -> str:
    """Make the user's modules importable: the run's snapshot of them (taken at submit, or by
    `launch resume --code current`), ahead of everything; without one, the submit directory.
    Then choose the Lightning namespace from the job's classes (choose_lightning), before
    anything of launch imports Lightning; returns it."""
    if run.code.is_dir():
        sys.path.insert(0, str(run.code))
    elif cfg.run.workdir and cfg.run.workdir not in sys.path:
        sys.path.insert(0, cfg.run.workdir)
    return choose_lightning(cfg, run)


# --------------------------------------------------------------------------- the Lightning namespace

OWN_PACKAGES = ("models.", "datamodules.")  # launch's examples follow the job's namespace


class MixedLightning(ImportError):
    """The job's classes come from both Lightning namespaces: no Trainer accepts them together."""


def lightning_of(cls: type) -> str | None:
    """The Lightning namespace `cls` subclasses (from its MRO); None: neither."""
    for base in getattr(cls, "__mro__", ()):
        module = getattr(base, "__module__", "") or ""
        for name in NAMESPACES:
            if module == name or module.startswith(name + "."):
                return name
    return None


def script_path(cfg: JobConfig, run: RunDir) -> Path:
    """The job's script as this attempt runs it: the run's snapshot of it, else the submitted file."""
    script = Path(cfg.job.script)
    if script.is_absolute():
        return script
    snapshot = run.code / script
    return snapshot if snapshot.is_file() else Path(cfg.run.workdir or ".") / script


def job_classes(cfg: JobConfig) -> list[tuple[str, str, str]]:
    """(job file key, module, class name) of the job's own classes: launch's examples and
    Lightning's bare callback and logger names, which follow the namespace, left out."""
    from launcher.config import split_class_path

    out = []
    for section, key, comp in job_components(cfg):
        module, name = split_class_path(section, comp.class_path)
        if module and not module.startswith(OWN_PACKAGES) and not module.startswith(tuple(NAMESPACES)):
            out.append((f"{key}.class_path", module, name))
    return out


def choose_lightning(cfg: JobConfig, run: RunDir) -> str:
    """Choose the Lightning namespace of the job's own classes for everything this process imports
    after (LAUNCH_LIGHTNING); pytorch_lightning when none says. Their sources are read first, so
    that launch's examples imported along with them already follow; then the classes themselves
    decide (a base made at run time shows only there). Two namespaces in one job are refused in one
    line naming a class of each."""
    import importlib
    import os

    from launcher.config.components import declared_lightning

    if cfg.job.script:  # nothing to look at but the script's imports
        from launcher.config.components import script_lightning

        namespace, seen = script_lightning(script_path(cfg, run))
        if len(seen) > 1:
            raise MixedLightning(mixed_lightning_message(*seen.values()))
        os.environ[LIGHTNING_ENV] = namespace or lightning_in_use()
        return os.environ[LIGHTNING_ENV]
    classes = job_classes(cfg)
    declared = {declared_lightning(module, name) for _, module, name in classes} - {None}
    if len(declared) == 1:
        os.environ[LIGHTNING_ENV] = declared.pop()
    found: dict[str, str] = {}
    for key, module, name in classes:
        cls = getattr(importlib.import_module(module), name, None)
        namespace = lightning_of(cls) if isinstance(cls, type) else None
        if namespace:
            found.setdefault(namespace, f"{key} {name} ({namespace})")
    if len(found) > 1:
        raise MixedLightning(mixed_lightning_message(*found.values()))
    chosen = next(iter(found), None) or lightning_in_use()
    os.environ[LIGHTNING_ENV] = chosen
    return chosen
