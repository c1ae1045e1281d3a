"""Fault guard: one rank's exception (or Ctrl-C) ends every rank of the job within seconds, not at a timeout.

Protocol (all through the c10d store the process group already uses; the keys live in
:mod:`gen3c_dist.parallel.watchdog`):

* The failing rank records ``failed_rank`` and its message (the first failure wins), tears its process groups
  down (NCCL: abort, which never waits on a peer) and waits, at most ``fault_grace_s``, for the others to
  acknowledge the record; then it re-raises its own exception, so its process exits non-zero and the entry
  point prints its one line. Waiting matters where a rank hosts the store (no torchrun): the others must have
  read the record before that host exits.
* Every rank runs a :class:`~gen3c_dist.parallel.watchdog.FailureWatchdog` while it is inside the guard. A peer
  sees the record within ``poll_s``, acknowledges, aborts its NCCL communicators and ends its process (status 1)
  if its main thread has not left the guard ``exit_grace_s`` later, e.g. because it is blocked in a gloo
  collective. Under torchrun the launcher then stops anything left. Every rank is gone a few seconds after the
  first failure, whatever the collective timeout (``distributed.timeout_s``) is.
* A peer whose own collective fails first (the connection closed, a timeout) raises :class:`RankFailedError`
  naming the failed rank, read from the record; with no record within ``fault_grace_s`` (a peer hung, or was
  killed without running its guard), the error says so.
* A :class:`~gen3c_dist.errors.SharedInputError` (every rank raised the same, together) and a
  :class:`RankFailedError` pass through: no rank is left waiting.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Callable, Iterator, Optional

import torch.distributed as dist

from gen3c_dist.errors import InputError, SharedInputError
from gen3c_dist.parallel.distributed import DistEnv, abandon_process_groups
from gen3c_dist.parallel.error_record import outlast_peer_record, publish_record_time, write_error_record
from gen3c_dist.parallel.watchdog import (
    ACK_KEY,
    FAILED_RANK_KEY,
    INTERRUPTED,
    MESSAGE_KEY,
    FailureWatchdog,
    read_failure,
    record_failure,
    stopped_line,
    wait_for_acks,
)

log = logging.getLogger(__name__)

__all__ = ["ACK_KEY", "FAILED_RANK_KEY", "MESSAGE_KEY", "RankFailedError", "fault_guard", "is_communication_error"]
INTERRUPT_ACK_WAIT_S = 1.0
_COMM_ERROR_MARKERS = ("gloo", "nccl", "timed out", "connection reset", "connection closed", "processgroup", "watchdog")


class RankFailedError(RuntimeError):
    """Raised on the ranks that were left waiting; ``failed_rank`` is None when no rank reported.

    ``announced`` is True when this rank's watchdog already printed the line naming the failed rank, so the
    entry point does not print it twice.
    """

    def __init__(self, message: str, *, failed_rank: int | None, announced: bool = False,
                 interrupted: bool = False) -> None:
        super().__init__(message)
        self.failed_rank = failed_rank
        self.announced = announced
        self.interrupted = interrupted  # the failed rank was stopped by Ctrl-C

    def summary(self, rank: int) -> str:
        """The line this rank prints: the failed rank prints its own error, so it is not repeated here."""
        return str(self) if self.failed_rank is None else stopped_line(rank, self.failed_rank)


def report_input_error(err: InputError) -> None:
    """Print a bad input's one line (``[rank R] ERROR gen3c_dist: ...``) once; see :attr:`InputError.reported`."""
    if not err.reported:
        logging.getLogger("gen3c_dist").error("%s", err)
        err.reported = True


def is_communication_error(exc: BaseException) -> bool:
    """A collective failed or timed out (as opposed to this rank's own code raising)."""
    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(marker in text for marker in _COMM_ERROR_MARKERS)


def _wait_for_record(store: dist.Store, *, wait_s: float) -> tuple[int, str] | None:
    deadline = time.monotonic() + wait_s
    while True:
        record = read_failure(store)
        if record is not None or time.monotonic() >= deadline:
            return record
        time.sleep(0.05)


def _report_and_release(env: DistEnv, store: dist.Store, watchdog: FailureWatchdog, exc: BaseException) -> None:
    message = INTERRUPTED if isinstance(exc, KeyboardInterrupt) else f"{type(exc).__name__}: {exc}"[:2000]
    if isinstance(exc, InputError):  # its one line, printed before the record lets any peer stop (and exit)
        report_input_error(exc)
    elif not isinstance(exc, KeyboardInterrupt):  # a bug: torchrun's record, before any peer may stop
        publish_record_time(store, write_error_record(exc))
    winner = record_failure(store, env.rank, message)
    if winner != env.rank:  # another rank failed first; this rank has seen its record
        watchdog.acknowledge()
    abandon_process_groups()  # `store` stays alive through our reference for the peers to read
    if winner == env.rank or env.rank == 0:  # rank 0 may host the store (no torchrun): the others read it there
        # After Ctrl-C every rank is stopping anyway: a short wait keeps the exit quick.
        wait_s = min(env.fault_grace_s, INTERRUPT_ACK_WAIT_S) if message == INTERRUPTED else env.fault_grace_s
        wait_for_acks(store, env.world_size, wait_s=wait_s)


def _peer_error(env: DistEnv, store: dist.Store, watchdog: FailureWatchdog, exc: BaseException) -> RankFailedError:
    record, announced = watchdog.tripped, watchdog.tripped is not None
    if record is None:
        try:
            record = _wait_for_record(store, wait_s=env.fault_grace_s)
        except (RuntimeError, OSError):  # the store's host is gone too
            record = None
    watchdog.acknowledge()
    if env.rank == 0 and record is not None:  # it may host the store (no torchrun): the others read it there
        wait_for_acks(store, env.world_size, wait_s=env.fault_grace_s)
    if record is None:
        return RankFailedError(
            f"rank {env.rank} stopped: a collective failed ({exc}) and no rank reported an error within "
            f"{env.fault_grace_s:.0f} s; a peer may be hung or was killed",
            failed_rank=None,
        )
    failed, message = record
    return RankFailedError(f"rank {env.rank} stopped because rank {failed} failed: {message}", failed_rank=failed,
                           announced=announced, interrupted=message == INTERRUPTED)


@contextlib.contextmanager
def fault_guard(env: DistEnv, *, before_exit: Optional[Callable[[str], None]] = None,
                exit_grace_s: float = 1.0) -> Iterator[None]:
    """Wrap a whole distributed run. Single-process runs pass straight through.

    ``before_exit`` and ``exit_grace_s`` go to the :class:`FailureWatchdog` (see there).
    """
    if not env.distributed:
        yield
        return
    store = dist.distributed_c10d._get_default_store()
    # One store request per poll and rank: a slower poll on large jobs keeps the store's load bounded.
    watchdog = FailureWatchdog(env.rank, env.world_size, store, poll_s=max(0.2, env.world_size / 1000),
                               exit_grace_s=exit_grace_s, ack_wait_s=env.fault_grace_s,
                               before_exit=before_exit).start()
    try:
        yield
    except SharedInputError:  # every rank raises the same, together: nobody is left waiting
        raise
    except RankFailedError as exc:  # raised where a rank waits on the store (the end-of-run rendezvous)
        watchdog.stop()
        watchdog.acknowledge()
        exc.announced = exc.announced or watchdog.tripped is not None
        outlast_peer_record(store)
        raise
    except (Exception, KeyboardInterrupt) as exc:
        watchdog.stop()  # from here this thread reports; `tripped` says whether the watchdog already did
        if not dist.is_initialized():  # failed before init or after teardown: nobody to tell
            raise
        if not isinstance(exc, KeyboardInterrupt) and (watchdog.tripped is not None or is_communication_error(exc)):
            peer_error = _peer_error(env, store, watchdog, exc)
            outlast_peer_record(store)
            raise peer_error from exc
        _report_and_release(env, store, watchdog, exc)  # Ctrl-C on this rank counts as its own failure
        raise
    finally:
        watchdog.stop()
