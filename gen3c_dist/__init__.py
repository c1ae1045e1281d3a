"""gen3c_dist: a multi-GPU inference runner for NVIDIA GEN3C (see README.md)."""

from __future__ import annotations

import functools
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Optional


def _package_version() -> str:
    """The installed distribution's version (setup.py is its one source)."""
    try:
        return metadata.version("gen3c_dist")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


__version__ = _package_version()


@functools.lru_cache(maxsize=1)
def source_commit() -> Optional[str]:
    """The git commit of the source tree this package runs from, with ``+dirty`` for local changes; None
    outside a git checkout (a wheel install) or without git."""
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "") if commit else None
