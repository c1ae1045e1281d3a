"""One rank failing must not leave the others waiting: every rank stops within seconds, naming the failed rank.

The collective timeout is a minute here, so a peer that only stopped at its timeout fails the bound. A peer
blocked in a gloo collective (gloo has no abort) is ended by its failure watchdog, which reports through the
``before_exit`` hook; a peer whose collective fails first raises ``RankFailedError`` itself. Either way it
names the failed rank, within ``STOP_BOUND_S`` of the failure.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import pytest
import torch

from gen3c_dist.config import ParallelConfig
from gen3c_dist.model.weights import random_dit
from gen3c_dist.parallel import attach_process_groups, fault_guard, make_cp_forward, plan_layout
from tests.dist_utils import report_abandoned, run_distributed, tiny_inputs, tiny_model_config

TIMEOUT_S = 60.0
GRACE_S = 20.0  # how long a failing rank waits for its peers' acknowledgements: they must come long before
# Watchdog poll (0.2 s) + its exit grace (1 s) + the failing rank's acknowledgement wait, with room for process
# scheduling on a loaded 2-core machine: far below the 60 s timeout the peers would otherwise wait.
STOP_BOUND_S = 8.0


@functools.lru_cache(maxsize=None)
def _model() -> torch.nn.Module:
    return random_dit(tiny_model_config(4), seed=0)


def _forward_twice(env: Any, parallel: dict[str, Any], *, between: Any) -> None:
    """Two CP forwards inside the fault guard; ``between(env)`` runs after the first on every rank."""
    layout = plan_layout(ParallelConfig(**parallel), world_size=env.world_size, rank=env.rank, num_heads=4,
                         guidance_runs_both=True)
    layout = attach_process_groups(layout, timeout_s=env.timeout_s)
    case = tiny_inputs(_model().cfg)
    with fault_guard(env, before_exit=report_abandoned), torch.inference_mode():
        forward_fn = make_cp_forward(_model(), layout)
        forward_fn(case["x"], case["timestep"], **case["cond"])
        if between(env):
            return
        forward_fn(case["x"], case["timestep"], **case["cond"])  # blocks on the failed or hung rank


def fail_on(env: Any, failing_rank: int, parallel: dict[str, Any]) -> None:
    def between(env: Any) -> bool:
        if env.rank == failing_rank:
            raise ValueError(f"injected failure on rank {env.rank}")
        return False

    _forward_twice(env, parallel, between=between)


def fail_and_linger(env: Any, failing_rank: int, parallel: dict[str, Any], linger_s: float) -> None:
    """As :func:`fail_on`, but the failing process stays alive afterwards: its connections stay open, as an
    NCCL peer sees a failed rank (no "connection closed" reaches a collective blocked on it)."""
    try:
        fail_on(env, failing_rank, parallel)
    finally:
        if env.rank == failing_rank:
            time.sleep(linger_s)


def hang_on(env: Any, hung_rank: int, hang_s: float) -> None:
    def between(env: Any) -> bool:
        if env.rank == hung_rank:
            time.sleep(hang_s)  # alive but silent: never enters the second forward's collectives
            return True
        return False

    _forward_twice(env, {"ring": env.world_size}, between=between)


@pytest.mark.parametrize(
    "world_size, failing_rank, parallel",
    [(3, 1, {"ring": 3}), (2, 0, {"ulysses": 2})],  # rank 0 also hosts the c10d store
)
def test_failing_rank_stops_the_others_long_before_the_timeout(world_size: int, failing_rank: int,
                                                               parallel: dict[str, Any]) -> None:
    results = run_distributed(fail_on, world_size, args=(failing_rank, parallel), timeout_s=TIMEOUT_S,
                              fault_grace_s=GRACE_S, join_timeout_s=90)
    failed = results[failing_rank]
    assert failed.error_type == "ValueError" and failed.exitcode != 0, failed
    assert failed.finished_at - failed.started_at < STOP_BOUND_S, "the failing rank waited for its peers"
    for result in results:
        if result.rank == failing_rank:
            continue
        assert result.exitcode != 0, result
        if result.error_type == "RankFailedError":  # its collective failed first: the record is in the error
            assert f"rank {failing_rank} failed: ValueError: injected failure on rank {failing_rank}" in result.error
        else:  # ended by its watchdog while blocked in a collective
            assert result.error_type == "Abandoned", result
            assert result.error == f"rank {result.rank} stopped because rank {failing_rank} failed (its error is " \
                                   f"printed by rank {failing_rank})"
        waited = result.finished_at - failed.started_at
        assert waited < STOP_BOUND_S, f"rank {result.rank} stopped {waited:.1f} s after the failure"


def test_peers_blocked_on_a_live_failed_rank_are_ended_by_their_watchdog() -> None:
    linger_s = 15.0
    results = run_distributed(fail_and_linger, 3, args=(2, {"ring": 3}, linger_s), timeout_s=TIMEOUT_S,
                              fault_grace_s=GRACE_S, join_timeout_s=90)
    failed = results[2]
    assert failed.error_type == "ValueError" and failed.finished_at - failed.started_at >= linger_s, failed
    for result in results[:2]:
        assert result.error_type == "Abandoned" and result.exitcode == 1, result
        assert result.error == f"rank {result.rank} stopped because rank 2 failed (its error is printed by rank 2)"
        waited = result.finished_at - failed.started_at
        assert waited < STOP_BOUND_S, f"rank {result.rank} stopped {waited:.1f} s after the failure"


def test_hung_rank_times_out_the_others() -> None:
    """No rank reports a failure: the watchdog has nothing to act on, and the collective timeout still holds."""
    timeout_s, hang_s = 3.0, 4.0  # the hung rank wakes after the peer timed out
    grace_s = 1.0
    results = run_distributed(hang_on, 2, args=(1, hang_s), timeout_s=timeout_s, fault_grace_s=grace_s,
                              join_timeout_s=60)
    waiting = results[0]
    assert waiting.error_type == "RankFailedError", waiting
    assert "no rank reported an error" in waiting.error
    assert timeout_s <= waiting.finished_at - waiting.started_at < timeout_s + 2 * grace_s + 2.5
    assert results[1].error_type is None
