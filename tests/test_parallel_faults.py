"""One rank failing must not leave the others waiting: they stop within the timeout, naming the failed rank.

Gloo subgroups do not notice a peer's shutdown, so the others stop at the collective timeout (5 s here): the
bound under test is "timeout plus a little", measured from the moment the failing rank started.
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
from tests.dist_utils import run_distributed, tiny_inputs, tiny_model_config

TIMEOUT_S = 5.0
GRACE_S = 1.0
SLACK_S = 2.5  # process scheduling on a loaded 2-core machine


@functools.lru_cache(maxsize=None)
def _model() -> torch.nn.Module:
    return random_dit(tiny_model_config(4), seed=0)


def _forward_twice(env: Any, parallel: dict[str, Any], *, between: Any) -> None:
    """Two CP forwards inside the fault guard; ``between(env)`` runs after the first on every rank."""
    layout = plan_layout(ParallelConfig(**parallel), world_size=env.world_size, rank=env.rank, num_heads=4,
                         guidance_runs_both=True)
    layout = attach_process_groups(layout, timeout_s=env.timeout_s)
    case = tiny_inputs(_model().cfg)
    with fault_guard(env), torch.inference_mode():
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
def test_failing_rank_is_named_by_the_others(world_size: int, failing_rank: int, parallel: dict[str, Any]) -> None:
    results = run_distributed(fail_on, world_size, args=(failing_rank, parallel), timeout_s=TIMEOUT_S,
                              fault_grace_s=GRACE_S, join_timeout_s=60)
    failed = results[failing_rank]
    assert failed.error_type == "ValueError" and failed.exitcode != 0, failed
    for result in results:
        if result.rank == failing_rank:
            continue
        assert result.error_type == "RankFailedError", result
        assert f"rank {failing_rank} failed: ValueError: injected failure on rank {failing_rank}" in result.error
        waited = result.finished_at - failed.started_at
        assert waited < TIMEOUT_S + SLACK_S, f"rank {result.rank} stopped {waited:.1f} s after the failure"
        assert result.exitcode != 0


def test_hung_rank_times_out_the_others() -> None:
    timeout_s, hang_s = 3.0, 4.0  # the hung rank wakes after the peer timed out
    results = run_distributed(hang_on, 2, args=(1, hang_s), timeout_s=timeout_s, fault_grace_s=GRACE_S,
                              join_timeout_s=60)
    waiting = results[0]
    assert waiting.error_type == "RankFailedError", waiting
    assert "no rank reported an error" in waiting.error
    assert timeout_s <= waiting.finished_at - waiting.started_at < timeout_s + 2 * GRACE_S + SLACK_S
    assert results[1].error_type is None
