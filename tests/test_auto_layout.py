"""``parallel.layout=auto``: the rules inside a replica, the makespan choice across replicas, kept degrees."""

from __future__ import annotations

import pytest

from gen3c_dist.config import AttentionBackend, LayoutMode, ParallelConfig, model_preset
from gen3c_dist.errors import InputError
from gen3c_dist.parallel.auto_layout import LayoutRequest, choose_layout, makespan_chunks
from gen3c_dist.perf.hardware import gpu_spec
from gen3c_dist.perf.projection import run_chunk_cost


def _h100_cost(ranks_per_node: int, *, both: bool = True):
    return run_chunk_cost(model_preset("gen3c_cosmos_7b"), height=704, width=1280, steps=35, guidance_runs_both=both,
                          tokenizer="group", gpus_per_node=ranks_per_node, gpu=gpu_spec("h100_sxm"))


def _degrees(choice) -> tuple[int, int, int, int]:
    c = choice.config
    return c.data, c.cfg, c.ulysses, c.ring


@pytest.mark.parametrize(
    "world, per_node, heads, both, expected",
    [
        (8, 8, 32, True, (1, 2, 4, 1)),  # one node: cfg 2 x Ulysses 4
        (16, 8, 32, True, (1, 2, 8, 1)),  # two nodes: each cfg half on its own node, Ulysses 8 inside it
        (64, 8, 32, True, (1, 2, 8, 4)),  # eight nodes: Ulysses stays in the node, the ring goes across
        (8, 8, 32, False, (1, 1, 8, 1)),  # one guidance pass: no cfg axis, Ulysses over the node
        (3, 3, 4, True, (1, 1, 1, 3)),  # odd world, 4 heads: ring 3
        (4, 4, 4, True, (1, 2, 2, 1)),
        (6, 6, 4, True, (1, 2, 1, 3)),  # Ulysses 3 would not divide 4 heads
    ],
)
def test_one_video_gets_every_rank(world, per_node, heads, both, expected):
    request = LayoutRequest(world, per_node, heads, both, video_chunks=(1,))
    choice = choose_layout(ParallelConfig(), request, _h100_cost(per_node, both=both))
    assert _degrees(choice) == expected
    assert choice.config.layout == LayoutMode.explicit  # fully resolved
    assert "1 video: every rank works on each" in choice.reason


def test_batch_takes_the_replica_count_with_the_shortest_makespan():
    # A cost that rewards parallelism sublinearly: 100 s per chunk on one rank, 100 / n ** 0.5 on n ranks.
    def cost(layout):
        return 100.0 / layout.replica_size**0.5

    request = LayoutRequest(4, 4, 4, True, video_chunks=(1, 1, 1, 1))
    choice = choose_layout(ParallelConfig(), request, cost)
    # 4 replicas x 1 video at 100 s beat 2 replicas x 2 videos at 141 s and 1 replica x 4 at 200 s.
    assert _degrees(choice) == (4, 1, 1, 1)
    spans = {a.data: round(a.makespan_s, 3) for a in choice.alternatives}
    assert spans == {1: 200.0, 2: round(2 * 100 / 2**0.5, 3), 4: 100.0}
    assert [a.chosen for a in choice.alternatives].count(True) == 1
    assert "4 videos: 4 replicas of 1 ranks gave the shortest projected makespan of 3 candidates" in choice.reason


def test_a_linear_cost_keeps_one_replica_and_ties_go_to_fewer_replicas():
    request = LayoutRequest(4, 4, 4, True, video_chunks=(1, 1, 1, 1))
    choice = choose_layout(ParallelConfig(), request, lambda layout: 100.0 / layout.replica_size)
    assert _degrees(choice) == (1, 2, 2, 1)  # every candidate takes 100 s: the tie goes to the fewest replicas


def test_never_more_replicas_than_videos_and_uneven_batches_count_the_busiest_replica():
    request = LayoutRequest(8, 8, 32, True, video_chunks=(3, 1, 1))
    choice = choose_layout(ParallelConfig(), request, lambda layout: 10.0)
    assert {a.data for a in choice.alternatives} == {1, 2}  # 4 and 8 replicas would exceed 3 videos
    assert makespan_chunks((3, 1, 1), 2) == 4 and makespan_chunks((3, 1, 1), 1) == 5 and makespan_chunks((), 3) == 0


def test_the_h100_model_prefers_sharing_ranks_for_a_small_batch_on_one_node():
    request = LayoutRequest(8, 8, 32, True, video_chunks=(1, 1, 1))
    choice = choose_layout(ParallelConfig(), request, _h100_cost(8))
    assert _degrees(choice) == (1, 2, 4, 1)
    by_data = {a.data: a.makespan_s for a in choice.alternatives}
    assert by_data[1] < by_data[2]  # 3 x 57.6 s on 8 ranks against 2 x 106.9 s on two replicas of 4


def test_degrees_that_are_set_are_kept():
    cost = _h100_cost(8)
    request = LayoutRequest(8, 8, 32, True, video_chunks=(1,))
    assert _degrees(choose_layout(ParallelConfig(ulysses=2), request, cost)) == (1, 2, 2, 2)
    assert _degrees(choose_layout(ParallelConfig(cfg=1), request, cost)) == (1, 1, 8, 1)
    assert _degrees(choose_layout(ParallelConfig(ring=8), request, cost)) == (1, 1, 1, 8)
    assert _degrees(choose_layout(ParallelConfig(data=2), request, cost)) == (2, 2, 2, 1)
    assert _degrees(choose_layout(ParallelConfig(attention=AttentionBackend.ring), request, cost)) == (1, 2, 1, 4)
    choice = choose_layout(ParallelConfig(ulysses=2, cfg=2), request, cost)
    assert "kept as set: cfg=2, ulysses=2" in choice.reason


def test_explicit_mode_is_the_old_arithmetic():
    request = LayoutRequest(8, 8, 32, True, video_chunks=(1,))
    choice = choose_layout(ParallelConfig(layout=LayoutMode.explicit, ulysses=4), request, _h100_cost(8))
    assert (choice.config.cfg, choice.config.ulysses, choice.config.ring, choice.config.data) == (1, 4, 1, 0)


def test_set_degrees_that_cannot_fit_raise_the_layout_error():
    request = LayoutRequest(2, 2, 4, True, video_chunks=(1,))
    with pytest.raises(InputError, match="world size 2 is not a multiple of parallel cfg x ulysses x ring"):
        choose_layout(ParallelConfig(ulysses=3), request, lambda layout: 1.0)
