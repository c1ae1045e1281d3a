"""Ctrl-C: stop within a second or two, keep what is complete, and say in one line what that is.

SIGINT reaches the main thread as ``KeyboardInterrupt``. The session then ignores further SIGINTs (torchrun
forwards the signal to its workers a second time, which would otherwise cut the cleanup short), cancels the
writes not started yet and waits briefly for the running one (:meth:`BackgroundWriter.abandon`), and raises
:class:`RunInterrupted` carrying the line the entry point prints. What is kept is read from disk: the complete
videos of this run, and for the video in progress the chunks its ``<name>.partial/`` state counts.
"""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Optional

from gen3c_dist.runner.resume import PartialState

WRITER_WAIT_S = 1.5  # how long a running write may still finish after Ctrl-C (a chunk's resume files)


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C, with the line saying what was kept (None on ranks that write nothing)."""

    def __init__(self, kept: Optional[str]) -> None:
        super().__init__(kept or "interrupted")
        self.kept = kept


def ignore_further_interrupts() -> None:
    """From here on a second SIGINT is ignored, so the cleanup of the first one runs to its (short) end."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def kept_line(complete: list[str], current: Optional[tuple[str, Path, int]]) -> str:
    """``complete``: the names of the videos this run finished; ``current``: (name, stem, chunks) in progress."""
    parts = []
    if complete:
        shown = ", ".join(complete[:3]) + (", ..." if len(complete) > 3 else "")
        parts.append(f"{len(complete)} video{'s' if len(complete) > 1 else ''} complete ({shown})")
    if current is not None:
        name, stem, chunks = current
        saved = PartialState(stem, "").chunks_saved()
        parts.append(f"{name}: chunk {saved} of {chunks} saved" if saved else
                     f"{name}: no chunk of {chunks} saved yet")
    if not parts:
        parts.append("nothing was written yet")
    return "interrupted: " + "; ".join(parts) + "; rerun the same command to continue"
