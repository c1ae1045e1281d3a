"""Temporary files that a killed run left in the output folder, removed when the next run starts there.

Every output is written as ``.<name>.tmp-<host>-<pid><suffix>`` beside its final name and renamed when
complete (:func:`gen3c_dist.runner.outputs.temporary_sibling`). A run that is killed (SIGKILL, a node lost, or
Ctrl-C cutting a long write short) leaves such files behind. At start, rank 0 removes those in the output
folder and in its ``<name>.partial/`` folders whose host is this host and whose process is no longer running,
and says which. Files of another host are never touched: its process may well be alive (two jobs sharing a
folder over a network file system), and this host cannot tell. A pid that runs again is left alone too.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

_HOST = re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname())[:40] or "host"
TEMPORARY = re.compile(r"^\..+\.tmp-(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)(\.[^.]+)?$")


def temporary_name(stem: str, suffix: str) -> str:
    """``.<stem>.tmp-<host>-<pid><suffix>``: this process's temporary name for ``<stem><suffix>``."""
    return f".{stem}.tmp-{_HOST}-{os.getpid()}{suffix}"


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def stale_temporaries(folder: Path) -> list[Path]:
    """This host's temporary files in ``folder`` and its ``*.partial/`` folders whose process has ended."""
    if not folder.is_dir():
        return []
    places = [folder, *sorted(p for p in folder.iterdir() if p.is_dir() and p.name.endswith(".partial"))]
    stale = []
    for place in places:
        for path in sorted(place.iterdir()):
            match = TEMPORARY.match(path.name)
            if match and path.is_file() and match["host"] == _HOST and not _running(int(match["pid"])):
                stale.append(path)
    return stale


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Remove :func:`stale_temporaries`; returns what was removed (a file another start removed first is skipped)."""
    removed = []
    for path in stale_temporaries(folder):
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        removed.append(path)
    return removed
