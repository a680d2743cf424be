"""Cluster profiles: the embedded `local` one and the tables of a cluster file."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from launcher.config.files import read_toml
from launcher.config.schema import DEFAULT_PROFILE, ClusterProfile
from launcher.config.typecheck import check_keys
from launcher.errors import ConfigError

CLUSTER_FILE_ENV = "LAUNCH_CLUSTER_FILE"

EMBEDDED_PROFILES: dict[str, dict[str, Any]] = {
    DEFAULT_PROFILE: {"backend": "local", "gpus_per_node": "auto", "shared_filesystem": True},
}


def find_cluster_file(explicit: str | None = None) -> Path | None:
    """--cluster-file, then $LAUNCH_CLUSTER_FILE, then ./cluster.toml; None: embedded only."""
    if explicit:
        return Path(explicit)
    if os.environ.get(CLUSTER_FILE_ENV):
        return Path(os.environ[CLUSTER_FILE_ENV])
    candidate = Path("cluster.toml")
    return candidate if candidate.is_file() else None


def load_profiles(path: Path | None) -> tuple[dict[str, dict[str, Any]], str]:
    """Raw, key-checked profile tables by name, and the file they came from."""
    profiles = {name: dict(table) for name, table in EMBEDDED_PROFILES.items()}
    if path is None:
        return profiles, "<embedded profiles>"
    data = read_toml(path)
    for name, table in data.items():
        if not isinstance(table, dict):
            raise ConfigError(str(path), name, "expected a [profile] table; each top-level table is a profile")
        check_keys(ClusterProfile, table, str(path), name)
        profiles[name] = dict(table)
    return profiles, str(path)


def detect_local_gpus() -> int:
    """GPUs on this machine, without importing torch (the CLI must start fast)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([d for d in visible.split(",") if d.strip() and d.strip() != "-1"])
    if not shutil.which("nvidia-smi"):
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))
