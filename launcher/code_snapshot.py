"""The user's code, frozen at submit: every attempt of a run imports what was submitted.

Which code: the top-level modules and packages of the job's class paths that live in the submit
directory, and, followed through their `import` statements, every other module or package of
the submit directory they import (launch's own `launcher` never: the ranks import the installed
one). Python files only: data, runs, checkpoints and caches stay where they are. Each is copied
into `RUN/code/`, written beside it and renamed into place, with a manifest of every file's
SHA-256; the ranks put that folder first on `sys.path` instead of the submit directory.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from launcher.config.components import split_class_path
from launcher.errors import LaunchError

MANIFEST = ".launch-code.json"
NEVER = {"launcher"}  # launch itself: the installed package serves every run
MAX_FILES = 5000  # a package this big under the submit directory is a mistake (a venv, a dataset)


def top_level(module: str) -> str:
    return module.split(".", 1)[0]


def class_roots(class_paths: dict[str, str]) -> list[str]:
    """The top-level module names of the job's class paths ({section: class_path})."""
    return sorted({top_level(split_class_path(key.split("[")[0], path)[0]) for key, path in class_paths.items()})


def _local(workdir: Path, name: str) -> Path | None:
    """`name` as a package folder or a module file directly in `workdir`, if it is one."""
    if name in NEVER or not name.isidentifier():
        return None
    if (workdir / name).is_dir() and any((workdir / name).glob("*.py")):
        return workdir / name
    if (workdir / f"{name}.py").is_file():
        return workdir / f"{name}.py"
    return None


def _python_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    found = []
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        # caches, hidden folders, and run directories (which hold code snapshots of their own)
        dirs[:] = [d for d in dirs if not d.startswith((".", "__pycache__")) and not (here / d / "events.jsonl").exists()]
        found += [here / f for f in files if f.endswith(".py")]
        if len(found) > MAX_FILES:
            raise LaunchError(f"{root}: more than {MAX_FILES} Python files under the package the job imports; "
                              "is a virtual environment or a dataset inside it? Set job.snapshot_code = false to "
                              "import the submit directory live")
    return sorted(found)


def _imported_roots(path: Path) -> set[str]:
    """Top-level names a file imports (absolute imports; a file that does not parse names none)."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
        return set()
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {top_level(a.name) for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(top_level(node.module))
    return names


def _imported_roots_beside(script: Path, workdir: Path) -> set[str]:
    """A script in a subfolder imports its neighbours by bare name (its folder is sys.path[0]): as
    roots relative to `workdir`, those are `folder.name`; collect() takes the folder's package."""
    folder = script.parent.resolve()
    if folder == workdir.resolve():
        return set()
    return {folder.relative_to(workdir.resolve()).parts[0]}


def collect(workdir: Path, roots: list[str]) -> dict[str, list[Path]]:
    """{top-level name: its Python files} for the roots found in `workdir` and what they import."""
    todo, found = list(roots), {}
    while todo:
        name = todo.pop()
        if name in found:
            continue
        place = _local(workdir, name)
        if place is None:
            continue
        found[name] = _python_files(place)
        for file in found[name]:
            todo += sorted(_imported_roots(file) - set(found))
    return found


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def take(workdir: Path, class_paths: dict[str, str], dest: Path, script: str = "") -> dict[str, object]:
    """Copy the job's code from `workdir` into `dest` (replacing it whole); returns the manifest.
    A script (under `workdir`) is taken with what it imports from there, at its relative path."""
    roots = class_roots(class_paths)
    found: dict[str, list[Path]] = {}
    path = (workdir / script).resolve() if script else None
    if path is not None and path.is_relative_to(workdir.resolve()):
        found["<script>"] = [path]
        roots += sorted(_imported_roots(path) | _imported_roots_beside(path, workdir))
    found.update(collect(workdir, roots))
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}-{time.monotonic_ns()}")
    files: dict[str, str] = {}
    try:
        for paths in found.values():
            for src in paths:
                rel = src.resolve().relative_to(workdir.resolve()).as_posix()
                (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, tmp / rel)
                files[rel] = _digest(tmp / rel)
        tmp.mkdir(parents=True, exist_ok=True)
        manifest = {"from": str(workdir), "packages": sorted(found), "files": files, "taken_at": time.time()}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}-{time.monotonic_ns()}")
        if dest.exists():
            dest.rename(old)
        tmp.rename(dest)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def manifest(dest: Path) -> dict[str, object] | None:
    try:
        return json.loads((dest / MANIFEST).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def changed(before: dict[str, object] | None, after: dict[str, object]) -> list[str]:
    """The files added, removed or edited between two manifests."""
    old = dict(before.get("files", {})) if before else {}
    new = dict(after.get("files", {}))
    return sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
