"""The end of a session: every rank hands in a small summary and waits, through the store, for the others.

A replica with fewer videos than its peers (3 videos on 2 replicas), or none, finishes early. It must not leave
while the others still run (whichever process hosts the store would take it with it), and it must not wait in
a collective either (that would hit the collective timeout during a long video). So it waits here, polling the
store, and gives up only when a failure is recorded (:mod:`gen3c_dist.parallel.faults`).
"""

from __future__ import annotations

import json
from typing import Any

import torch.distributed as dist

from gen3c_dist.parallel.distributed import DistEnv, arrive_and_wait
from gen3c_dist.parallel.faults import FAILED_RANK_KEY, RankFailedError
from gen3c_dist.parallel.watchdog import INTERRUPTED, read_failure

SUMMARY_KEY = "gen3c_dist/summary"


def exchange_summaries(env: DistEnv, summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Every rank's ``summary`` (JSON-able), in rank order, once every rank has handed its own in."""
    if not env.distributed:
        return [summary]
    store = dist.distributed_c10d._get_default_store()
    store.set(f"{SUMMARY_KEY}/{env.rank}", json.dumps(summary))
    if not arrive_and_wait(store, f"{SUMMARY_KEY}/arrived", env.world_size, wait_s=None, abort_key=FAILED_RANK_KEY):
        failed, message = read_failure(store)
        raise RankFailedError(f"rank {env.rank} stopped because rank {failed} failed: {message}", failed_rank=failed,
                              interrupted=message == INTERRUPTED)
    return [json.loads(store.get(f"{SUMMARY_KEY}/{rank}").decode()) for rank in range(env.world_size)]
