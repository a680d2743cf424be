"""Typed job and cluster configuration, parsed once from TOML and validated in one place.

One job per module: `schema` (the dataclasses, with bounds on the fields), `typecheck` (raw
TOML -> dataclasses), `profiles` (cluster files), `components` (the class registry and class-path
checks), `checks` (bounds and cross-field rules), `resolve` (precedence, sources, `finalize`),
`files` (TOML in and out). Every user mistake raises `ConfigError`, whose message names the file,
the key path and what is allowed. Nothing here imports torch: the CLI's fast commands depend on it.
"""

from launcher.config.checks import check_path, parse_mem_mb, parse_time_minutes
from launcher.config.components import REGISTRY, check_component, split_class_path
from launcher.config.files import dumps, load_resolved, read_toml, to_dict
from launcher.config.profiles import CLUSTER_FILE_ENV, detect_local_gpus, find_cluster_file, load_profiles
from launcher.config.resolve import Request, finalize, free_port, parse_override, resolve
from launcher.config.schema import DEFAULT_PROFILE, ClusterProfile, JobConfig, TrainerSection
from launcher.errors import ConfigError, LaunchError

__all__ = [
    "CLUSTER_FILE_ENV", "DEFAULT_PROFILE", "REGISTRY", "ClusterProfile", "ConfigError", "JobConfig", "LaunchError",
    "Request", "TrainerSection", "check_component", "check_path", "detect_local_gpus", "dumps", "finalize",
    "find_cluster_file", "free_port", "load_profiles", "load_resolved", "parse_mem_mb", "parse_override",
    "parse_time_minutes", "read_toml", "resolve", "split_class_path", "to_dict",
]
