"""The CLI as a live process for the fault and Ctrl-C tests: its lines as they come, SIGINT, exit times.

:class:`CliProcess` starts ``python -m MODULE ARGS`` (under torchrun for ``nproc > 1``) in a new session, so
``interrupt()`` can send SIGINT to its process group as a terminal's Ctrl-C does, and it watches the process
tree, so a test can tell when each rank (a child of torchrun) ended, not only when torchrun did.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Optional

from tests.runner_utils import REPO, free_port


def _descendants(root: int) -> set[int]:
    """Live (non-zombie) processes below ``root``, from /proc."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended while we looked
            continue
        if fields[0] != "Z":
            parent[int(entry)] = int(fields[1])
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, ppid in parent.items() if ppid in frontier} - found
        found |= frontier
    return found


class CliProcess:
    def __init__(self, args: list[str], *, nproc: int = 1, module: str = "gen3c_dist.run",
                 env: Optional[dict] = None) -> None:
        launcher = [] if nproc == 1 else ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
                                          "--master_addr=127.0.0.1", f"--master_port={free_port()}"]
        cmd = [sys.executable, *launcher, "-m", module, *args]
        full_env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
        self.lines: list[tuple[float, str]] = []  # (time.time(), line) as printed, stdout and stderr merged
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self.lines.append((time.time(), line.rstrip("\n")))

    @property
    def output(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def wait_until(self, condition: Callable[[], bool], *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.proc.poll() is not None:
                raise AssertionError(f"the run ended before the condition held:\n{self.output[-3000:]}")
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"condition not met in {timeout} s:\n{self.output[-3000:]}")
            time.sleep(0.05)

    def interrupt(self) -> tuple[float, set[int]]:
        """SIGINT to the process group, as Ctrl-C in a terminal; (when, the processes alive then).

        Under torchrun that reaches torchrun alone (it starts each rank in a session of its own) and torchrun
        forwards it to the ranks, which is also what a terminal's Ctrl-C does."""
        alive = _descendants(self.proc.pid) | {self.proc.pid}
        sent = time.time()
        os.killpg(self.proc.pid, signal.SIGINT)
        return sent, alive

    def wait(self, *, timeout: float, watch: Optional[set[int]] = None) -> dict[int, float]:
        """Wait for the exit; returns when (time.time()) each process of ``watch`` was last seen alive."""
        watch = set(watch or ())
        ended: dict[int, float] = {}
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"no exit within {timeout} s:\n{self.output[-3000:]}")
            now, alive = time.time(), _descendants(self.proc.pid) | {self.proc.pid}
            ended.update({pid: now for pid in watch - alive - set(ended)})
            time.sleep(0.02)
        ended.update({pid: time.time() for pid in watch - set(ended)})
        self._reader.join(timeout=5)
        return ended

    def kill(self) -> None:
        """End what this helper started, by pid: the process and its descendants (torchrun starts each rank in
        a session of its own, outside the process group), so a failed test leaves nothing running."""
        for pid in _descendants(self.proc.pid) | {self.proc.pid}:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()
