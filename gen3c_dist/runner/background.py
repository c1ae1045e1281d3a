"""Work the lead can do beside the critical path: writing outputs, and loading the DiT.

* :class:`BackgroundWriter`: one worker thread that runs writes in the order they were submitted (a chunk's mp4
  frames, its resume files, at the end the record), so the next chunk's conditioning and denoising start at
  once. Ordering is what keeps the completion rule intact: the JSON record is submitted last, so it still
  appears only after every other file of the video is complete. A failed write is raised by the next
  :meth:`BackgroundWriter.check` or :meth:`BackgroundWriter.drain` on the main thread, so it ends the run
  through the usual fault path instead of vanishing in a thread.
* :class:`Background`: a result computed in a thread (the DiT load, which is file reads and
  host-to-device copies) while the main thread runs the lead's depth, cache and tokenizer work.

With ``runtime.overlap=false`` both run inline, which is the reference the overlap tests compare against.
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
import time
from typing import Any, Callable, Generic, Optional, TypeVar

import torch

T = TypeVar("T")


class BackgroundWriter:
    """Writes run in submission order on one daemon thread (inline when disabled).

    A daemon thread, not a thread pool: the interpreter does not wait for a daemon thread at exit, so after
    Ctrl-C (:meth:`abandon`) the process ends at once even while a long mp4 write is under way. Every write
    goes through a temporary file renamed when complete (:mod:`gen3c_dist.runner.outputs`), so a write cut
    short leaves only a temporary file, which the next start removes.
    """

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: Optional[threading.Thread] = None
        if enabled:
            self._thread = threading.Thread(target=self._work, name="gen3c-writer", daemon=True)
            self._thread.start()
        self._pending: list[concurrent.futures.Future] = []
        self.busy_s = 0.0  # seconds the worker spent writing (for the record's "write" stage)
        self._lock = threading.Lock()

    def _timed(self, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            with self._lock:
                self.busy_s += time.perf_counter() - start

    def _work(self) -> None:
        while (item := self._queue.get()) is not None:
            future, fn, args, kwargs = item
            if not future.set_running_or_notify_cancel():  # cancelled by abandon()
                continue
            try:
                future.set_result(self._timed(fn, args, kwargs))
            except BaseException as err:  # handed to the main thread by check() / drain()
                future.set_exception(err)

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Run ``fn(*args, **kwargs)`` after every earlier submission; inline when disabled."""
        if self._thread is None:
            self._timed(fn, args, kwargs)
            return
        self.check()
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._pending.append(future)
        self._queue.put((future, fn, args, kwargs))

    def check(self) -> None:
        """Raise the first error of a finished write, without waiting for the rest."""
        for future in [f for f in self._pending if f.done()]:
            self._pending.remove(future)
            future.result()

    def drain(self) -> None:
        """Wait for every submitted write; raise the first error."""
        pending, self._pending = self._pending, []
        errors = []
        for future in pending:
            try:
                future.result()
            except BaseException as err:  # keep waiting for the rest, so no write is left running
                errors.append(err)
        if errors:
            raise errors[0]

    def abandon(self, wait_s: float) -> bool:
        """Cancel the writes not started yet and wait at most ``wait_s`` for the running one (Ctrl-C).

        Returns True when no write is running any more (the caller may then remove the temporary files)."""
        pending, self._pending = self._pending, []
        running = [future for future in pending if not future.cancel()]
        done, _ = concurrent.futures.wait(running, timeout=wait_s)
        return len(done) == len(running)

    def close(self) -> None:
        """Stop the worker after the writes already submitted (:meth:`drain` first to see their errors)."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread = None


class Background(Generic[T]):
    """A value being computed in a thread (or already computed, when overlap is off)."""

    def __init__(self, fn: Callable[[], T], *, enabled: bool) -> None:
        self._value: Optional[T] = None
        self._error: Optional[BaseException] = None
        self.seconds = 0.0
        self._thread: Optional[threading.Thread] = None
        if enabled:
            self._thread = threading.Thread(target=self._run, args=(fn,), name="gen3c-loader", daemon=True)
            self._thread.start()
        else:
            self._run(fn)

    def _run(self, fn: Callable[[], T]) -> None:
        start = time.perf_counter()
        try:
            # inference_mode is thread-local: the loader thread must enter it itself.
            with torch.inference_mode():
                self._value = fn()
        except BaseException as err:
            self._error = err
        self.seconds = time.perf_counter() - start

    def result(self) -> T:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            raise self._error
        return self._value  # type: ignore[return-value]

