"""The errors a user sees as one line (`launch: error: ...`, exit code 2). Imports nothing of launch."""

from __future__ import annotations


class LaunchError(Exception):
    """A user mistake: the CLI prints it as one line and exits with code 2."""


class ConfigError(LaunchError):
    """A bad value: names the file (or flag) it came from, the key path and what is allowed."""

    def __init__(self, source: str, key: str, message: str) -> None:
        self.source, self.key, self.message = source, key, message
        where = f"{source}: {key}: " if key else f"{source}: "
        super().__init__(where + message)
