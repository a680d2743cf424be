"""The job's classes: registered short names, import paths, and a check that the class exists
(its module's source is parsed, never executed: no torch at submission)."""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from launcher.errors import ConfigError

if TYPE_CHECKING:
    from launcher.config.schema import ComponentSection, JobConfig

# Registered short names for the examples that ship with launch; anything else is an import path.
REGISTRY: dict[str, dict[str, str]] = {
    "model": {
        "mlp": "models.mlp:MLP",
        "cnn": "models.cnn:SmallCNN",
        "resnet18": "models.resnet:ResNet18",
    },
    "data": {
        "digits": "datamodules.digits:DigitsDataModule",
        "mnist": "datamodules.mnist:MNISTDataModule",
        "cifar10": "datamodules.cifar10:CIFAR10DataModule",
    },
    "callbacks": {},
    "loggers": {},
}
# A bare class name in [[callbacks]] or [[loggers]] is Lightning's own, in the job's namespace
# (LAUNCH_LIGHTNING: usercode.choose_lightning; pytorch_lightning's names are checked at submission).
LIGHTNING_MODULE = {"callbacks": "{}.callbacks", "loggers": "{}.loggers"}
LIGHTNING_ENV = "LAUNCH_LIGHTNING"
NAMESPACES = {"pytorch_lightning": "lightning_fabric", "lightning.pytorch": "lightning.fabric"}  # -> its Fabric
DISTRIBUTIONS = {"pytorch_lightning": "pytorch-lightning", "lightning.pytorch": "lightning"}


def lightning_in_use() -> str:
    """The namespace this process's Lightning comes from (usercode.choose_lightning set it)."""
    name = os.environ.get(LIGHTNING_ENV) or "pytorch_lightning"
    if name not in NAMESPACES:
        raise ImportError(f"{LIGHTNING_ENV}={name!r}: expected one of {', '.join(NAMESPACES)}")
    return name


def job_components(cfg: JobConfig) -> list[tuple[str, str, ComponentSection]]:
    """(section, key, entry) of the job's classes: model, data (absent for a script's job),
    callbacks[i], loggers[i]; `key` names it in a job file ("model", "callbacks[0]")."""
    named = [(s, s, c) for s, c in (("model", cfg.model), ("data", cfg.data)) if c is not None]
    for section in ("callbacks", "loggers"):
        named += [(section, f"{section}[{i}]", c) for i, c in enumerate(getattr(cfg, section))]
    return named


def split_class_path(section: str, class_path: str) -> tuple[str, str]:
    """'mlp' or 'models.mlp.MLP' or 'models.mlp:MLP' -> ('models.mlp', 'MLP')."""
    class_path = REGISTRY[section].get(class_path, class_path)
    if section in LIGHTNING_MODULE and not re.search(r"[.:]", class_path):
        return LIGHTNING_MODULE[section].format(lightning_in_use()), class_path
    if ":" in class_path:
        module, _, name = class_path.partition(":")
    else:
        module, _, name = class_path.rpartition(".")
    return module, name


def module_source(module: str) -> str | None:
    """The file of `module` without importing it or its packages (`find_spec` of a dotted name
    imports the parents: `pytorch_lightning.callbacks` would import torch). None: no such module."""
    top, *rest = module.split(".")
    spec = importlib.util.find_spec(top)
    if spec is None and rest:
        raise ModuleNotFoundError(f"No module named {top!r}")  # as find_spec(module) says it
    if spec is None or not rest:
        return None if spec is None else spec.origin or ""
    for base in spec.submodule_search_locations or ():
        path = Path(base, *rest)
        for candidate in (path.with_suffix(".py"), path / "__init__.py"):
            if candidate.is_file():
                return str(candidate)
    found = importlib.util.find_spec(module)  # compiled, or a package that extends its own path
    return None if found is None else found.origin or ""


def check_component(section: str, class_path: str, source: str, key: str = "",
                    init_args: Mapping[str, Any] | None = None) -> str | None:
    """Refuse a class path whose module or class does not exist, without importing torch, and a
    null init argument over a default that is not None (null_over_default); return the Lightning
    namespace the class subclasses, as its source says (declared_lightning).

    The module's source is parsed, not executed; classes made at import time are not seen, so
    those pass here and are checked again when the job imports them.
    """
    import ast
    import sys

    key = key or f"{section}.class_path"
    module, name = split_class_path(section, class_path)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as in the job, where the submit directory is importable
    registered = ", ".join(REGISTRY[section]) or f"a class of {LIGHTNING_MODULE[section].format('pytorch_lightning')}"
    if not module:
        raise ConfigError(source, key, f"{class_path!r} is neither a registered name ({registered}) nor 'module.Class'")
    try:
        origin = module_source(module)
    except (ImportError, ValueError) as err:
        raise ConfigError(source, key, f"cannot import {module!r}: {err}") from None
    if origin is None:
        raise ConfigError(source, key, f"no module named {module!r} (registered names: {registered})")
    if not origin.endswith(".py"):
        return None
    try:
        tree = ast.parse(Path(origin).read_text(encoding="utf-8"), filename=origin)
    except SyntaxError as exc:
        raise ConfigError(source, key, f"{origin}, line {exc.lineno}: SyntaxError: {exc.msg}") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(source, key, f"cannot read {origin}: {exc}") from None
    defined = {
        n.name for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef))
    } | {
        t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)
    } | {
        (a.asname or a.name) for n in tree.body if isinstance(n, ast.ImportFrom) for a in n.names
    }
    if name not in defined:
        close = difflib.get_close_matches(name, sorted(defined), n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ConfigError(source, key, f"module {module!r} has no class {name!r}{hint}")
    null_over_default(tree, name, init_args or {}, source, key.removesuffix(".class_path"))
    return declared_lightning(module, name, origin, tree)


def null_over_default(tree: Any, name: str, init_args: Mapping[str, Any], source: str, key: str) -> None:
    """A null init argument (a LightningCLI config has them; TOML has none) is left out of the
    frozen job, so the class's own default applies: refused where class `name`'s __init__ (in the
    parsed module `tree`) defaults it to something else, which would then be trained instead of None."""
    import ast

    nulls = [k for k, v in init_args.items() if v is None]
    cls = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name), None) if nulls else None
    init = next((n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None) if cls else None
    if init is None:
        return
    args = init.args.posonlyargs + init.args.args
    defaults = dict(zip([a.arg for a in args][len(args) - len(init.args.defaults):], init.args.defaults, strict=True))
    defaults |= {a.arg: d for a, d in zip(init.args.kwonlyargs, init.args.kw_defaults, strict=True) if d is not None}
    for arg in nulls:
        default = defaults.get(arg)
        if default is not None and not (isinstance(default, ast.Constant) and default.value is None):
            raise ConfigError(source, f"{key}.init_args.{arg}", f"null, where {name} defaults it to "
                                                                f"{ast.unparse(default)}: a job holds no null (TOML has "
                                                                "none), so the default would be trained; give a value")


# --------------------------------------------------------------------------- the Lightning namespace

LAUNCH_OWN = tuple(str(Path(__file__).resolve().parents[2] / pkg) for pkg in ("models", "datamodules"))


def mixed_lightning_message(first: str, second: str) -> str:
    return (f"the job's classes come from both Lightning namespaces: {first}, {second}; no Trainer takes both: "
            "import one of `lightning` (import lightning as L) or `pytorch_lightning` everywhere")


def declared_lightning(module: str, name: str, origin: str | None = None, tree: object = None,
                       depth: int = 0) -> str | None:
    """The Lightning namespace class `name` of `module` subclasses, read from the source (bases
    followed through imports, into other modules of the project): "lightning.pytorch" (`import
    lightning as L`), "pytorch_lightning", or None: launch's own examples (they follow the job's)
    and bases made at run time, which the rank reads from the class itself (usercode.choose_lightning)."""
    import ast

    try:
        origin = origin or module_source(module)
        if not origin or not origin.endswith(".py") or origin.startswith(LAUNCH_OWN) or depth > 8:
            return None
        tree = tree or ast.parse(Path(origin).read_text(encoding="utf-8"))
    except (ImportError, ValueError, OSError, SyntaxError):
        return None
    package = module if origin.endswith("__init__.py") else module.rpartition(".")[0]
    names: dict[str, str] = {}  # a module-level name -> the dotted path it was imported as
    for node in tree.body:
        if isinstance(node, ast.Import):
            for alias in node.names:
                names[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}".strip(".")
            for alias in node.names:
                names[alias.asname or alias.name] = f"{base}.{alias.name}"
    found = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name), None)
    if found is None:  # imported into this module: follow it
        target = names.get(name, "")
        return _namespace_of(target, depth) if target else None
    for base in found.bases:
        parts = []
        while isinstance(base, ast.Attribute):
            parts.insert(0, base.attr)
            base = base.value
        if not isinstance(base, ast.Name):
            continue
        if base.id in names:
            namespace = _namespace_of(".".join([names[base.id], *parts]), depth)
        elif not parts:  # a class of the same module
            namespace = declared_lightning(module, base.id, origin, tree, depth + 1)
        else:
            namespace = None
        if namespace:
            return namespace
    return None


def namespace_named(dotted: str) -> str | None:
    """The Lightning namespace a dotted name lies in: `lightning` and `lightning.*` are
    lightning.pytorch's, `pytorch_lightning.*` pytorch_lightning's; Fabric's and others, none."""
    top = dotted.split(".")[0]
    if top not in ("lightning", "pytorch_lightning") or dotted.startswith("lightning.fabric"):
        return None
    return "pytorch_lightning" if top == "pytorch_lightning" else "lightning.pytorch"


def _namespace_of(dotted: str, depth: int) -> str | None:
    """Of an imported base class: its name's namespace, else its own bases' (read from its module)."""
    if namespace := namespace_named(dotted):
        return namespace
    module, _, name = dotted.rpartition(".")
    return declared_lightning(module, name, depth=depth + 1) if module else None


def script_lightning(script: Path) -> tuple[str | None, dict[str, str]]:
    """The Lightning namespace a script imports, read from it and from the modules beside it that
    it imports (its folder is its sys.path[0]): (namespace or None, {namespace: "file imports
    module"} for each one seen; two mean a mix)."""
    import ast

    found: dict[str, str] = {}
    todo, seen = [script], set()
    while todo and len(seen) < 100:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (OSError, SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            else:
                continue
            for module in modules:
                if namespace := namespace_named(module):
                    found.setdefault(namespace, f"{path.name} imports {module}")
                top = script.parent / module.split(".")[0]
                todo += [f for f in (top.with_suffix(".py"), top / "__init__.py") if f.is_file()]
    return (next(iter(found)) if len(found) == 1 else None), found

