"""Time budgets for ``benchmarks/gpu_check.py``: a total deadline, one budget per step, and a clean stop.

A device lease is short and nothing on the machine survives it, so every step must end inside its budget and
leave what it measured in the report. Two mechanisms:

* **Prediction.** A step starts a unit of work (one forward, one compile, one encode) only when the time it
  predicts for that unit fits in what is left of its budget (:meth:`StepClock.fits`); a unit left out is
  noted, and the step ends ``partial`` with the results it has.
* **Alarm.** A unit that runs far past its prediction (a compile, a kernel slower than expected) is stopped by
  SIGALRM at the end of the step's budget. The handler raises :class:`BudgetSpent` at the next Python bytecode,
  i.e. after the CUDA call in flight returns, so no kernel is torn. It derives from ``BaseException`` so the
  per-unit ``except Exception`` handlers of a step (a kernel that fails is recorded and the next one runs) do
  not swallow it; torch.compile's wrappers re-raise it as the cause of their own errors, which
  :func:`caused_by_budget` recognises.

Step outcomes: ``done`` (every unit ran), ``partial`` (some units ran, others did not fit or were stopped),
``stopped`` (the alarm fired before any result), ``failed`` (an exception; the message is kept), ``skipped``
(too little of the total budget was left to start the step).
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import time
import traceback
from typing import Any, Callable, Iterator, Optional

DONE, PARTIAL, STOPPED, FAILED, SKIPPED = "done", "partial", "stopped", "failed", "skipped"
STATUSES = (DONE, PARTIAL, STOPPED, FAILED, SKIPPED)


class BudgetSpent(BaseException):
    """The step's time budget ran out while a unit of work was running."""


def caused_by_budget(err: BaseException) -> bool:
    """Whether ``err`` is, or was raised while handling, a :class:`BudgetSpent`."""
    seen: set[int] = set()
    current: Optional[BaseException] = err
    while current is not None and id(current) not in seen:
        if isinstance(current, BudgetSpent):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False


@contextlib.contextmanager
def alarm(seconds: float) -> Iterator[None]:
    """Raise :class:`BudgetSpent` in the main thread after ``seconds`` (wall clock)."""

    def on_alarm(signum: int, frame: Any) -> None:
        raise BudgetSpent(f"the step's {round(seconds, 1):g} s budget is spent")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-3))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class StepClock:
    """What a running step sees of its budget."""

    def __init__(self, seconds: float, now: Callable[[], float] = time.monotonic) -> None:
        self.seconds, self._now = seconds, now
        self._start = now()
        self.left_out: list[str] = []  # units that did not fit, in the order they were refused
        self.skip_reason: Optional[str] = None  # set by skip(): the step decided not to run at all

    def elapsed(self) -> float:
        return self._now() - self._start

    def remaining(self) -> float:
        return self.seconds - self.elapsed()

    def fits(self, what: str, predicted_s: float) -> bool:
        """Whether a unit predicted to take ``predicted_s`` fits in what is left; a refusal is noted."""
        left = self.remaining()
        if predicted_s <= left:
            return True
        self.left_out.append(f"{what} (predicted {predicted_s:.1f} s, {max(left, 0.0):.1f} s left)")
        return False

    def skip(self, reason: str) -> None:
        """Mark the whole step as not run (its result may still say what it would have run)."""
        self.skip_reason = reason


@dataclasses.dataclass
class StepRecord:
    name: str
    status: str
    budget_s: float
    elapsed_s: float
    note: str
    error: Optional[str]
    result: dict

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


StepFn = Callable[[StepClock, dict], None]  # fills the result dict as it goes, so a stop keeps what ran


class Budget:
    """The total deadline of a check; :meth:`run` gives each step ``min(its limit, what is left)``."""

    def __init__(self, total_s: float, now: Callable[[], float] = time.monotonic) -> None:
        self.total_s, self._now = total_s, now
        self._start = now()

    def remaining(self) -> float:
        return self.total_s - (self._now() - self._start)

    def run(self, name: str, fn: StepFn, *, limit_s: float, min_start_s: float) -> StepRecord:
        seconds = min(limit_s, self.remaining())
        if seconds < min_start_s:
            note = f"{max(seconds, 0.0):.0f} s left of the total budget, under the {min_start_s:.0f} s this step needs"
            return StepRecord(name, SKIPPED, round(max(seconds, 0.0), 1), 0.0, note, None, {})
        clock, result = StepClock(seconds, self._now), {}
        status, error, notes = DONE, None, []
        try:
            with alarm(seconds):
                fn(clock, result)
        except BaseException as err:  # noqa: BLE001 - every way a step ends is recorded, except an interrupt
            if isinstance(err, KeyboardInterrupt):
                raise
            if caused_by_budget(err):
                status = PARTIAL if result else STOPPED
                notes.append(f"stopped by its {round(seconds, 1):g} s budget")
            else:
                status = FAILED
                error = f"{type(err).__name__}: {err}"
                frames = traceback.extract_tb(err.__traceback__)
                if frames:
                    notes.append(f"raised at {frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name}")
        if clock.skip_reason is not None and status == DONE:
            status = SKIPPED
            notes.append(clock.skip_reason)
        if clock.left_out:
            status = PARTIAL if status == DONE else status
            notes.append("left out: " + "; ".join(clock.left_out))
        return StepRecord(name, status, round(seconds, 1), round(clock.elapsed(), 2), " | ".join(notes), error, result)
