"""Wall time per stage, for the JSON record and the benchmarks."""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from typing import Iterator

import torch


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class StageTimer:
    """Accumulated seconds per named stage, plus the duration of every denoising step in order."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.step_seconds: list[float] = []
        self._last_step: float | None = None

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        _sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            _sync()
            self.seconds[name] += time.perf_counter() - start

    def start_steps(self) -> None:
        _sync()
        self._last_step = time.perf_counter()

    def step_done(self) -> None:
        _sync()
        now = time.perf_counter()
        if self._last_step is not None:
            self.step_seconds.append(now - self._last_step)
            self.seconds["denoise"] += now - self._last_step
        self._last_step = now

    def record(self) -> dict:
        return {"stages_s": {k: round(v, 4) for k, v in self.seconds.items()}, "steps_s": [round(s, 4) for s in self.step_seconds]}
