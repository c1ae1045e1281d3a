"""Fault guard: one rank's exception must not leave the others waiting forever in a collective.

Protocol (all through the c10d store the process group already uses):

* The failing rank records ``failed_rank`` and its message (first failure wins) and shuts its process groups
  down. Peers blocked in a collective with it then fail at their collective timeout (``timeout_s``; gloo and the
  NCCL watchdog both enforce it), or sooner where the backend notices the closed connection.
* A peer whose collective fails or times out reads the record and raises :class:`RankFailedError` naming the
  failed rank. If nobody recorded a failure within ``fault_grace_s``, the error says so (a peer hung, or was
  killed without running its guard).
* Before raising, every rank acknowledges in the store and waits (bounded) for the others' acknowledgements:
  whichever process hosts the store must not exit before the others have read the record. The failing rank
  then re-raises its own exception, so its process exits non-zero.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Iterator

import torch.distributed as dist

from gen3c_dist.errors import SharedInputError
from gen3c_dist.parallel.distributed import DistEnv

log = logging.getLogger(__name__)

FAILED_RANK_KEY = "gen3c_dist/fault/failed_rank"
MESSAGE_KEY = "gen3c_dist/fault/message"
ACK_KEY = "gen3c_dist/fault/acks"
_COMM_ERROR_MARKERS = ("gloo", "nccl", "timed out", "connection reset", "connection closed", "processgroup", "watchdog")


class RankFailedError(RuntimeError):
    """Raised on the ranks that were left waiting; ``failed_rank`` is None when no rank reported."""

    def __init__(self, message: str, *, failed_rank: int | None) -> None:
        super().__init__(message)
        self.failed_rank = failed_rank


def is_communication_error(exc: BaseException) -> bool:
    """A collective failed or timed out (as opposed to this rank's own code raising)."""
    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(marker in text for marker in _COMM_ERROR_MARKERS)


def _read_failure(store: dist.Store, *, wait_s: float) -> tuple[int, str] | None:
    deadline = time.monotonic() + wait_s
    while True:
        if store.check([FAILED_RANK_KEY]):
            return int(store.get(FAILED_RANK_KEY).decode()), store.get(MESSAGE_KEY).decode()
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.05)


def _acknowledge_and_wait(env: DistEnv, store: dist.Store, *, wait_s: float) -> None:
    """Count this rank as done, then wait (bounded) for the rest: whichever rank hosts the store must outlive
    the others' reads of the failure record."""
    deadline = time.monotonic() + wait_s
    try:
        store.add(ACK_KEY, 1)
        while store.add(ACK_KEY, 0) < env.world_size and time.monotonic() < deadline:
            time.sleep(0.05)
    except (RuntimeError, OSError):  # the store's host already left: nothing more to wait for
        pass


def _report_and_release(env: DistEnv, store: dist.Store, exc: BaseException) -> None:
    message = f"{type(exc).__name__}: {exc}"[:2000]
    if store.compare_set(FAILED_RANK_KEY, "", str(env.rank)).decode() == str(env.rank):
        store.set(MESSAGE_KEY, message)
    log.error("rank %d failed (%s); releasing its peers", env.rank, message)
    dist.destroy_process_group()  # `store` stays alive through our reference for the peers to read
    # Peers notice at their collective timeout at the latest, then read the record and acknowledge.
    _acknowledge_and_wait(env, store, wait_s=env.timeout_s + 2 * env.fault_grace_s)


def _peer_error(env: DistEnv, store: dist.Store, exc: BaseException) -> RankFailedError:
    try:
        record = _read_failure(store, wait_s=env.fault_grace_s)
    except (RuntimeError, OSError):  # the store's host is gone too
        record = None
    _acknowledge_and_wait(env, store, wait_s=env.fault_grace_s)
    if record is None:
        return RankFailedError(
            f"rank {env.rank} stopped: a collective failed ({exc}) and no rank reported an error within "
            f"{env.fault_grace_s:.0f} s; a peer may be hung or was killed",
            failed_rank=None,
        )
    failed, message = record
    return RankFailedError(f"rank {env.rank} stopped because rank {failed} failed: {message}", failed_rank=failed)


@contextlib.contextmanager
def fault_guard(env: DistEnv) -> Iterator[None]:
    """Wrap a whole distributed run. Single-process runs pass straight through."""
    if not env.distributed:
        yield
        return
    try:
        yield
    except (RankFailedError, SharedInputError):  # nobody is left waiting: every rank raises the same
        raise
    except (Exception, KeyboardInterrupt) as exc:
        if not dist.is_initialized():  # failed before init or after teardown: nobody to tell
            raise
        store = dist.distributed_c10d._get_default_store()
        if is_communication_error(exc):
            raise _peer_error(env, store, exc) from exc
        _report_and_release(env, store, exc)
        raise
