"""Run a benchmark's per-rank function on N fresh local processes (spawned: nothing inherited) over gloo.

``launch_local(run_rank, job, world)`` calls ``run_rank(job)`` on ranks 0..world-1 with the torch.distributed
environment variables set, and returns their results sorted by ``result["rank"]``.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
from typing import Any, Callable

RankFn = Callable[[Any], dict[str, Any]]


def _worker(run_rank: RankFn, job: Any, rank: int, world: int, port: int, out: Any) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank)
    )
    out.put(run_rank(job))


def launch_local(run_rank: RankFn, job: Any, world: int, *, timeout_s: float = 1800) -> list[dict[str, Any]]:
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    procs = [ctx.Process(target=_worker, args=(run_rank, job, r, world, port, out)) for r in range(world)]
    for proc in procs:
        proc.start()
    results = sorted((out.get(timeout=timeout_s) for _ in procs), key=lambda r: r["rank"])
    for proc in procs:
        proc.join()
    return results
