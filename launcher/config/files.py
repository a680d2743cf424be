"""TOML in and out: reading a job or cluster file, writing and reading the frozen `config.toml`."""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from launcher.errors import ConfigError, LaunchError

if TYPE_CHECKING:
    from launcher.config.schema import JobConfig


def read_document(path: Path, kind: str, load: Callable[[Any], Any], invalid: type[Exception], mode: str = "rb") -> Any:
    """Load a TOML or YAML file (`kind`); a missing, unreadable or malformed one is one line naming it."""
    try:
        with open(path, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as fh:
            return load(fh)
    except FileNotFoundError:
        raise LaunchError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise LaunchError(f"{path}: is a directory, expected a {kind} file") from None
    except invalid as err:
        raise ConfigError(str(path), "", f"invalid {kind}: {' '.join(str(err).split())}") from None
    except UnicodeDecodeError:
        raise ConfigError(str(path), "", f"invalid {kind}: not UTF-8 text") from None


def read_toml(path: Path) -> dict[str, Any]:
    return read_document(path, "TOML", tomllib.load, tomllib.TOMLDecodeError)


def to_dict(cfg: JobConfig) -> dict[str, Any]:
    """A TOML-ready dict: None values are left out (they are the defaults)."""

    def clean(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {k: clean(v) for k, v in obj.items() if v is not None}
        if isinstance(obj, list):
            return [clean(v) for v in obj]
        return obj

    return clean(dataclasses.asdict(cfg))


def dumps(cfg: JobConfig) -> str:
    import tomli_w

    return tomli_w.dumps(to_dict(cfg))


def load_resolved(path: Path) -> JobConfig:
    """Read a run directory's frozen `config.toml` (already validated at submission)."""
    from launcher.config.schema import JobConfig
    from launcher.config.typecheck import build

    return build(JobConfig, read_toml(path), str(path))
