"""The device mesh gives every rank exactly the layout's five rank sets (8 gloo ranks)."""

from __future__ import annotations

import pytest
import torch.distributed as dist

from gen3c_dist.config import ParallelConfig
from gen3c_dist.parallel.layout import GROUP_DIMS, plan_layout
from gen3c_dist.parallel.mesh import attach_process_groups
from tests.dist_utils import run_distributed

pytestmark = pytest.mark.usefixtures("single_thread")


def _rank_sets(env, degrees: dict) -> dict:
    layout = plan_layout(ParallelConfig(**degrees), world_size=env.world_size, rank=env.rank, num_heads=4,
                         guidance_runs_both=True)
    layout = attach_process_groups(layout, timeout_s=env.timeout_s)
    got = {}
    for name in GROUP_DIMS:
        group = getattr(layout.groups, name)
        got[name] = (env.rank,) if group is None else tuple(dist.get_process_group_ranks(group))
    want = {name: getattr(layout, f"{name}_ranks") for name in GROUP_DIMS}
    return {"got": got, "want": want, "mesh_coordinate": tuple(layout.groups.mesh.get_coordinate())}


@pytest.mark.parametrize("degrees", [{"cfg": 2, "ulysses": 2, "ring": 2}, {"data": 2, "cfg": 2, "ring": 2},
                                     {"ulysses": 4, "ring": 2}, {"data": 8}])
def test_mesh_groups_equal_the_layout_rank_sets(degrees: dict):
    results = [r.unwrap() for r in run_distributed(_rank_sets, 8, args=(degrees,))]
    for rank, result in enumerate(results):
        assert result["got"] == result["want"], rank
        layout = plan_layout(ParallelConfig(**degrees), world_size=8, rank=rank, num_heads=4, guidance_runs_both=True)
        assert result["mesh_coordinate"] == tuple(layout.coordinate.values())
