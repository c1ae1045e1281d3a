"""The failure watchdog: a thread that ends this rank within seconds once another rank has failed.

A rank blocked in a collective cannot notice a peer's failure by itself: gloo waits until the collective
timeout (10 minutes by default), and NCCL until its own watchdog fires. The failing rank records itself in the
c10d store (:mod:`gen3c_dist.parallel.faults`); this thread polls that record. When another rank has failed it

1. logs one line naming the failed rank (the failed rank prints its own error; it is not repeated here) and
   acknowledges in the store, so the failed rank knows it was heard and can exit;
2. aborts this rank's NCCL communicators, so a collective the main thread is blocked in returns with an error
   and the main thread leaves through the fault guard by itself (gloo has no abort: ``abort()`` is a no-op there);
3. gives the main thread ``exit_grace_s`` to leave the guard, then flushes the logs and ends the process with
   ``os._exit``: the main thread may be blocked in C++ where no exception can reach it. Rank 0 first waits
   (at most ``ack_wait_s``) for every other rank's acknowledgement, since without torchrun it hosts the store
   the others read the record from. torchrun then stops whatever is left of the job.

The thread uses its own connection to the store (``Store.clone``), so a main thread blocked in a store call
(a subgroup's rendezvous) cannot block the poll. It stops quietly when the store goes away: that only happens
at the end of the job or when its host died, and in the second case torchrun stops the job.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from typing import Callable, Optional

import torch
import torch.distributed as dist

from gen3c_dist.parallel.error_record import outlast_peer_record

log = logging.getLogger("gen3c_dist")

FAILED_RANK_KEY = "gen3c_dist/fault/failed_rank"
MESSAGE_KEY = "gen3c_dist/fault/message"
ACK_KEY = "gen3c_dist/fault/acks"
INTERRUPTED = "interrupted"  # the message of a rank stopped by Ctrl-C (SIGINT): its peers exit quietly
EXIT_STATUS = 1  # a rank stopped because another failed
INTERRUPTED_STATUS = 130  # 128 + SIGINT, as a shell reports an interrupted command


def read_failure(store: dist.Store) -> Optional[tuple[int, str]]:
    """(failed rank, its message) once a rank has recorded a failure, else None. Never blocks."""
    if not store.check([FAILED_RANK_KEY]):
        return None
    rank = store.get(FAILED_RANK_KEY).decode()
    # Each rank writes its message under its own key before it competes for the record, so it is there.
    return int(rank), store.get(f"{MESSAGE_KEY}/{rank}").decode()


def record_failure(store: dist.Store, rank: int, message: str) -> int:
    """Record this rank's failure unless another rank's came first; returns the rank the record names."""
    store.set(f"{MESSAGE_KEY}/{rank}", message)
    return int(store.compare_set(FAILED_RANK_KEY, "", str(rank)).decode())


def abort_nccl_groups() -> bool:
    """Abort every NCCL communicator of this process (safe from another thread); False when there is none.

    ``ProcessGroup.abort()`` is called on each group directly, not ``_abort_process_group``, which also edits
    the process-group bookkeeping that the main thread may be reading. All aborts go inside one NCCL group
    call, as torch does, so the communicators' aborts cannot wait on each other.
    """
    world = dist.distributed_c10d._world
    default = world.default_pg
    if default is None or not dist.is_nccl_available():
        return False
    try:
        backend = default._get_backend(torch.device("cuda"))
    except RuntimeError:  # no CUDA backend in this group
        return False
    if not isinstance(backend, dist.ProcessGroupNCCL):
        return False
    groups = sorted(world.pg_names, key=lambda pg: world.pg_names[pg], reverse=True)
    backend._group_start()
    try:
        for group in groups:
            group.abort()
    finally:
        backend._group_end()
    return True


def flush_logs() -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()


class FailureWatchdog:
    """Ends this rank ``poll_s + exit_grace_s`` after another rank records a failure (see the module docstring).

    ``before_exit(line)`` runs on the watchdog thread just before ``os._exit`` (the test harness reports its
    result there). :meth:`stop` when the guarded block is left; :attr:`tripped` is the failure seen, if any.
    """

    def __init__(self, rank: int, world_size: int, store: dist.Store, *, poll_s: float = 0.2,
                 exit_grace_s: float = 1.0, ack_wait_s: float = 5.0,
                 before_exit: Optional[Callable[[str], None]] = None) -> None:
        self.rank, self.world_size, self.poll_s, self.exit_grace_s = rank, world_size, poll_s, exit_grace_s
        self.ack_wait_s, self.before_exit = ack_wait_s, before_exit
        try:
            self._store = store.clone()  # its own connection: see the module docstring
        except (RuntimeError, NotImplementedError):  # a store type without clone (not the env:// TCPStore)
            self._store = store
        self._left = threading.Event()  # the main thread left the guarded block
        self._acked = threading.Event()
        self._lock = threading.Lock()  # trip or stop, never both: the line naming the failure is printed once
        self.tripped: Optional[tuple[int, str]] = None
        self._thread = threading.Thread(target=self._run, name="gen3c-fault-watchdog", daemon=True)

    def start(self) -> "FailureWatchdog":
        self._thread.start()
        return self

    def stop(self) -> None:
        """The main thread leaves the guarded block; after this the watchdog never trips (:attr:`tripped` is
        final), so the caller can tell whether the watchdog already printed the line."""
        with self._lock:
            self._left.set()

    def acknowledge(self) -> None:
        """Count this rank as having seen the failure record (once, whichever thread sees it first)."""
        if self._acked.is_set():
            return
        self._acked.set()
        try:
            self._store.add(ACK_KEY, 1)
        except (RuntimeError, OSError):  # the store's host already left
            pass

    def _run(self) -> None:
        while not self._left.wait(self.poll_s):
            try:
                record = read_failure(self._store)
            except (RuntimeError, OSError):  # the store is gone: the job is ending (see the module docstring)
                return
            if record is not None and record[0] != self.rank:
                self._trip(*record)
                return

    def _trip(self, failed: int, message: str) -> None:
        interrupted = message == INTERRUPTED
        line = stopped_line(self.rank, failed, interrupted=interrupted)
        with self._lock:
            if self._left.is_set():  # the main thread left first and reports the failure itself
                return
            self.tripped = (failed, message)
            if not interrupted:  # after Ctrl-C every rank is stopping: only the ranks that write say what was kept
                log.error("%s", line)
        self.acknowledge()
        abort_nccl_groups()
        if self._left.wait(self.exit_grace_s):
            return  # the main thread left the guard by itself and reports the failure there
        if self.rank == 0:  # rank 0 hosts the store without torchrun: the others must have read the record first
            wait_for_acks(self._store, self.world_size, wait_s=self.ack_wait_s)
        outlast_peer_record(self._store)  # torchrun's root cause must be the failed rank (see error_record)
        if self.before_exit is not None:
            self.before_exit(line)
        flush_logs()
        os._exit(INTERRUPTED_STATUS if interrupted else EXIT_STATUS)


def stopped_line(rank: int, failed: int, *, interrupted: bool = False) -> str:
    """What a rank stopped by another's failure prints (the failed rank prints its own error, not repeated)."""
    if interrupted:
        return f"rank {rank} stopped because rank {failed} was interrupted"
    return f"rank {rank} stopped because rank {failed} failed (its error is printed by rank {failed})"


def wait_for_acks(store: dist.Store, world_size: int, *, wait_s: float) -> bool:
    """Wait (bounded) until every other rank acknowledged the failure record; True when all did."""
    deadline = time.monotonic() + wait_s
    try:
        while store.add(ACK_KEY, 0) < world_size - 1:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
    except (RuntimeError, OSError):  # the store's host already left: nothing more to wait for
        pass
    return True
