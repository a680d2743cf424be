"""The Lightning and torchmetrics versions launch's touchpoints of their internals
(lightning_compat.py) were written for, and the one-line refusal of others: lightning_compat runs
the check when it is imported, before it imports torch or torchmetrics."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from launcher.config.components import DISTRIBUTIONS, lightning_in_use

# The major.minor versions every touchpoint in lightning_compat.py was written and tested for
# (pinned in pyproject; each Lightning distribution ships its Fabric: lightning_fabric in
# pytorch-lightning).
WRITTEN_FOR = {"pytorch-lightning": "2.6", "lightning": "2.6", "torchmetrics": "1.9"}


class IncompatibleVersions(RuntimeError):
    """The installed Lightning or torchmetrics is not the one launch's internals were written for."""


def version_problem(installed: dict[str, str | None] | None = None, packages: tuple[str, ...] | None = None) -> str | None:
    """What differs between the installed versions of `packages` (the ones this rank imports;
    default all of WRITTEN_FOR) and WRITTEN_FOR, as one line; None if nothing."""
    packages = packages or tuple(WRITTEN_FOR)
    if installed is None:
        installed = {}
        for package in packages:
            try:
                installed[package] = version(package)
            except PackageNotFoundError:
                installed[package] = None
    wrong = [f"{pkg} {installed.get(pkg) or 'missing'} (needs {want}.x)" for pkg, want in WRITTEN_FOR.items()
             if pkg in packages and ".".join(str(installed.get(pkg)).split(".")[:2]) != want]
    if not wrong:
        return None
    return ("launch's Lightning internals (launcher/runtime/lightning_compat.py) were written for other versions: "
            f"{', '.join(wrong)}; install the versions pinned in pyproject.toml (pip install -e .)")


def check_versions() -> None:
    problem = version_problem(packages=(DISTRIBUTIONS[lightning_in_use()], "torchmetrics"))
    if problem:
        raise IncompatibleVersions(problem)
