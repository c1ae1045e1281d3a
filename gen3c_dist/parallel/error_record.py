"""torchrun's error record of a bug, written so that the launcher's "Root Cause" names the rank that failed.

torchrun (``torch.distributed.elastic``) prints a failed job's root cause as the failure with the smallest
timestamp, in whole seconds. A rank's timestamp is the one in its error file (``TORCHELASTIC_ERROR_FILE``,
written by torch's ``@record``) or, without one, the second the launcher saw the process exit; a tie goes to
the failure it saw first. With our fault guard, the ranks a bug stops exit within a second of it, often before
the failing rank (which first waits for their acknowledgements) has reached ``@record``: the launcher then
named a rank that only stopped. So here:

* the failing rank writes its record (:func:`write_error_record`) where the bug is caught, before it tells the
  others, and publishes the record's second in the store (:func:`publish_record_time`);
* a rank stopped by that failure leaves only after that second has passed (:func:`outlast_peer_record`), at most
  one second later than it would have, so its own failure is strictly later and never a tie;
* :func:`record` replaces torch's decorator on the entry point and writes the record only when the guard did not
  (a bug on one process, or before the process group exists), so the timestamp is never moved later.

Bad inputs and Ctrl-C are not bugs: they print their one line and write no record (see ``gen3c_dist.run``).
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Callable, Optional, TypeVar

import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import ErrorHandler

ERROR_FILE_ENV = "TORCHELASTIC_ERROR_FILE"  # set by torchrun for each rank
RECORD_TIME_KEY = "gen3c_dist/fault/record_time"
_RECORDED = "_gen3c_error_recorded"  # set on an exception whose record is written
F = TypeVar("F", bound=Callable)


def write_error_record(exc: BaseException) -> Optional[int]:
    """Write ``exc`` (call inside its ``except``: the traceback is the current one) to this rank's torchrun
    error file, once; returns the record's whole-second timestamp, or None when not under torchrun."""
    path = os.environ.get(ERROR_FILE_ENV)
    if not path or getattr(exc, _RECORDED, False):
        return None
    ErrorHandler().record_exception(exc)  # torch's own format, which the launcher reads back
    setattr(exc, _RECORDED, True)
    with open(path) as handle:  # the second the launcher will compare, as written (not a second clock reading)
        return int(json.load(handle)["message"]["extraInfo"]["timestamp"])


def publish_record_time(store: dist.Store, stamp: Optional[int]) -> None:
    if stamp is not None:
        store.set(RECORD_TIME_KEY, str(stamp))


def outlast_peer_record(store: dist.Store, *, max_wait_s: float = 1.5) -> None:
    """Wait until the second of the failed rank's record is over (no wait when it wrote none)."""
    try:
        if not store.check([RECORD_TIME_KEY]):
            return
        stamp = int(store.get(RECORD_TIME_KEY).decode())
    except (RuntimeError, OSError):  # the store's host is gone: nothing to order against
        return
    time.sleep(min(max(stamp + 1 - time.time(), 0.0), max_wait_s))


def record(fn: F) -> F:
    """torch's ``@record`` for the entry point, except that a record the fault guard wrote is kept as it is."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        ErrorHandler().initialize()
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            write_error_record(exc)
            raise

    return wrapper  # type: ignore[return-value]
