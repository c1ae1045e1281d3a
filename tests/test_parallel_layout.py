"""Layout planning: rank coordinates, group partitions, head-count re-factoring and validation errors."""

from __future__ import annotations

import pytest

from gen3c_dist.config import DistributedConfig, ParallelConfig
from gen3c_dist.parallel.distributed import init_distributed, read_rank_env
from gen3c_dist.parallel.layout import plan_layout
from gen3c_dist.parallel.sharding import TokenShard


def _plan(world: int, rank: int = 0, heads: int = 32, both: bool = True, **parallel):
    return plan_layout(ParallelConfig(**parallel), world_size=world, rank=rank, num_heads=heads, guidance_runs_both=both)


def test_rank_coordinates_data_cfg_ring_ulysses_order() -> None:
    layout = _plan(16, rank=13, ulysses=2, ring=2, cfg=2)
    assert layout.data == 2
    assert (layout.data_index, layout.cfg_index, layout.ring_index, layout.ulysses_index) == (1, 1, 0, 1)
    assert layout.cp_ranks == (12, 13, 14, 15)
    assert layout.ulysses_ranks == (12, 13)
    assert layout.ring_ranks == (13, 15)
    assert layout.cfg_ranks == (9, 13)
    assert layout.replica_ranks == tuple(range(8, 16))
    assert layout.cp_lead == 12 and layout.replica_lead == 8 and not layout.is_replica_lead


def test_groups_of_each_kind_partition_the_world() -> None:
    layouts = [_plan(16, rank=r, ulysses=2, ring=2, cfg=2) for r in range(16)]
    for kind in ("replica", "cp", "cfg", "ulysses", "ring"):
        groups = {getattr(layout, f"{kind}_ranks") for layout in layouts}
        assert sorted(r for group in groups for r in group) == list(range(16)), kind
        assert all(layout.rank in getattr(layout, f"{kind}_ranks") for layout in layouts)
    assert sorted({layout.ring_ranks for layout in layouts})[:2] == [(0, 2), (1, 3)]
    assert layouts[13].mesh_shape == (2, 2, 2, 2) and layouts[13].coordinate == {"data": 1, "cfg": 1, "ring": 0, "ulysses": 1}


@pytest.mark.parametrize(
    "ulysses, ring, heads, expected",
    [(2, 1, 3, (1, 2)), (4, 1, 6, (2, 2)), (6, 1, 32, (2, 3)), (2, 2, 3, (1, 4)), (4, 2, 32, (4, 2))],
)
def test_head_count_refactors_ulysses_into_ring(ulysses: int, ring: int, heads: int, expected: tuple[int, int]) -> None:
    layout = _plan(ulysses * ring, heads=heads, ulysses=ulysses, ring=ring)
    assert (layout.ulysses, layout.ring) == expected
    assert layout.cp == ulysses * ring
    assert (layout.note != "") == (expected[0] != ulysses)


@pytest.mark.parametrize(
    "world, parallel, both, fragment",
    [
        (8, {"ulysses": 3}, True, "world size 8 is not a multiple of parallel cfg x ulysses x ring = 1 x 3 x 1 = 3"),
        (8, {"ulysses": 2, "data": 2}, True, "= 2 x 1 x 2 x 1 = 4 does not equal the world size 8"),
        (2, {"cfg": 2}, False, "parallel.cfg=2 puts the cond and uncond passes on different ranks"),
        (4, {"ring": 1, "ulysses": 4, "attention": "ring"}, True, "a ring over a group of 1 rank"),
        (4, {"ulysses": 0}, True, "parallel.ulysses=0 is invalid"),
        (4, {"ring": -1}, True, "parallel.ring=-1 is invalid"),
        (4, {"cfg": 4}, True, "parallel.cfg=4 is invalid"),
        (4, {"attention": "flash"}, True, "parallel.attention='flash' is unknown"),
        (2, {"ulysses": 2, "attention": "transformer_engine"}, True, "needs CUDA"),
        (4, {"ulysses": 2, "ring": 2, "attention": "deepspeed"}, True, "parallel.attention='deepspeed' is Ulysses only"),
    ],
)
def test_invalid_layouts_raise_the_same_message_on_every_rank(world: int, parallel: dict, both: bool, fragment: str) -> None:
    messages = set()
    for rank in range(world):
        with pytest.raises(ValueError) as info:
            _plan(world, rank=rank, both=both, **parallel)
        messages.add(str(info.value))
    assert len(messages) == 1
    assert fragment in messages.pop()


def test_explicit_ulysses_refuses_head_refactoring() -> None:
    with pytest.raises(ValueError, match="num_heads=3 divisible by parallel.ulysses=2"):
        _plan(2, heads=3, ulysses=2, attention="ulysses")


def test_token_shard_padding_positions() -> None:
    shards = [TokenShard(tokens=5, degree=4, index=i) for i in range(4)]
    assert [s.per_rank for s in shards] == [2] * 4 and shards[0].padded == 8
    assert [s.valid_keys(start=s.start, length=s.per_rank) for s in shards] == [2, 2, 1, 0]


def test_rank_environment_torchrun_slurm_and_plain() -> None:
    assert read_rank_env({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}) == (3, 8, 1)
    slurm = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "MASTER_ADDR": "n0", "MASTER_PORT": "1"}
    assert read_rank_env(slurm) == (5, 8, 1)
    assert read_rank_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}) is None
    with pytest.raises(ValueError, match="export MASTER_ADDR and MASTER_PORT"):
        read_rank_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "2"})
    env = init_distributed(DistributedConfig(backend="gloo", timeout_s=7.0), environ={})
    assert (env.rank, env.world_size, env.distributed, env.timeout_s) == (0, 1, False, 7.0)
