"""The cache render spread over a group (gloo, 1-3 processes) equals the serial ``Cache3D.render`` bit for bit.

Each rank warps a pair-aligned range of items with its own batching; the warp of an item does not depend on its
batch neighbours (only the pair's z-buffer max couples items), so on CPU fp32 the gathered result is exact. The
source adds the noise, so its generator must end in the serial run's state. Caches are built as Cache3D builds
them: depth-edge masks and a foreground boundary when the filter is on, None when it is off.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import pytest
import torch
import torch.distributed as dist

from gen3c_dist.geometry.cache3d import WARP_PAIR, Cache3D
from gen3c_dist.geometry.camera import generate_trajectory
from gen3c_dist.parallel.comm_counter import CommCounter
from gen3c_dist.parallel.render_parallel import HEADER_FIELDS, plan_render_ranges, render_distributed
from tests.dist_utils import run_distributed

H, W = 32, 48
# name -> (frames, buffers, filter on, noise strength); odd item counts leave a half pair at the end
CASES = {
    "filtered": (21, 2, True, 0.3),  # masks and boundary set
    "plain": (25, 1, False, 0.0),  # masks and boundary None; noise still consumes the generator
    "masks_only": (9, 2, "masks", 0.2),  # masks set, boundary None
}


pytestmark = pytest.mark.usefixtures("single_thread")  # the gloo ranks run one thread each (conftest.py)


def _K() -> torch.Tensor:
    return torch.tensor([[40.0, 0.0, W / 2 - 0.3], [0.0, 42.0, H / 2 + 0.2], [0.0, 0.0, 1.0]])


def _cameras(frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    w2cs, Ks = generate_trajectory("left", camera_rotation="center_facing", num_frames=max(frames, 2),
                                   movement_distance=0.3, center_depth=1.0, initial_w2c_44=torch.eye(4),
                                   initial_K_33=_K())
    return w2cs[None, :frames], Ks[None, :frames]


def _cache(name: str, images_per_warp: int = 8) -> Cache3D:
    """A random scene with a nearer box (depth edges to filter), with ``buffers`` frames inserted."""
    frames, buffers, filtered, noise = CASES[name]
    g = torch.Generator().manual_seed(7)
    image = torch.rand(1, 3, H, W, generator=g) * 2 - 1
    depth = 2.0 + 0.3 * torch.rand(1, 1, H, W, generator=g)
    depth[..., 10:20, 16:30] = 1.2
    cache = Cache3D(image, depth, torch.eye(4)[None], _K()[None], generator=torch.Generator().manual_seed(3),
                    frame_buffer_max=2, filter_points_threshold=0.05 if filtered else 1.0,
                    foreground_masking=filtered is True, noise_aug_strength=noise, images_per_warp=images_per_warp)
    w2cs, Ks = _cameras(3)
    for i in range(1, buffers):
        cache.update(image.flip(-1), depth + 0.1 * i, w2cs[:, i], Ks[:, i], depth_alignment=False)
    return cache


@functools.lru_cache(maxsize=None)
def _serial(name: str) -> dict[str, Any]:
    """Two serial renders in a row (the generator carries over) and the generator state after them."""
    cache = _cache(name)
    w2cs, Ks = _cameras(CASES[name][0])
    first = cache.render(w2cs, Ks)
    second = cache.render(w2cs.flip(1), Ks)
    return {"first": first, "second": second, "state": cache.generator.get_state()}


# ---- rank bodies -----------------------------------------------------------------------------------------------
def _render_case(name: str, group: Any, src: int, *, to_all: bool = False) -> dict[str, Any]:
    is_src = group is None or dist.get_rank() == src
    cache = _cache(name) if is_src else None
    w2cs, Ks = _cameras(CASES[name][0]) if is_src else (None, None)
    counter = CommCounter()
    kwargs = dict(group=group, src=src, device=torch.device("cpu"), to_all=to_all, counter=counter)
    first = render_distributed(cache, w2cs, Ks, **kwargs)
    second = render_distributed(cache, None if w2cs is None else w2cs.flip(1), Ks, **kwargs)
    state = cache.generator.get_state() if is_src else None
    return {"first": first, "second": second, "state": state, "bytes": counter.pending}


def _bad_source(group: Any, src: int) -> Optional[str]:
    """The source passes cameras of the wrong batch size; every rank must raise rather than hang."""
    is_src = group is None or dist.get_rank() == src
    w2cs, Ks = _cameras(5)
    try:
        render_distributed(_cache("plain") if is_src else None, torch.cat([w2cs, w2cs]) if is_src else None,
                           Ks if is_src else None, group=group, src=src, device=torch.device("cpu"))
    except ValueError as exc:
        return str(exc)
    return None


def run_world(env: Any, world_size: int) -> dict[str, Any]:
    world = dist.group.WORLD if world_size > 1 else None  # one process: no process group, as in the runner
    out = {"filtered_src0": _render_case("filtered", world, 0)}
    out["plain_src_last_all"] = _render_case("plain", world, world_size - 1, to_all=True)
    out["masks_only_src0"] = _render_case("masks_only", world, 0)
    out["bad_source"] = _bad_source(world, world_size - 1)
    if world_size == 3:
        out["filtered_src1"] = _render_case("filtered", world, 1)  # the source warps the middle range
        sub = dist.new_group([1, 2])  # group ranks differ from global ranks; rank 0 stays out
        if env.rank in (1, 2):
            out["sub_plain_src2"] = _render_case("plain", sub, 2, to_all=True)
    return out


# ---- multi-process tests ---------------------------------------------------------------------------------------
def _assert_equal_to_serial(got: dict[str, Any], name: str, where: str, *, holds_result: bool, is_src: bool) -> None:
    expected = _serial(name)
    for call in ("first", "second"):
        for part, want in zip(("warps", "masks"), expected[call]):
            value = got[call][("warps", "masks").index(part)]
            if holds_result:
                assert value is not None and torch.equal(value, want), f"{where}: {call} {part} differ from serial"
            else:
                assert value is None, f"{where}: {call} {part} returned off the source"
    if is_src:
        assert torch.equal(got["state"], expected["state"]), f"{where}: generator state differs from serial"


def _state_bytes(name: str, group_size: int) -> int:
    """Header plus images, points, masks/boundary (1 byte per bool) and cameras, sent to every other rank."""
    frames, buffers, filtered, _ = CASES[name]
    state = 4 * buffers * H * W * 6 + 4 * frames * 25 + len(HEADER_FIELDS) * 8
    state += buffers * H * W if filtered else 0
    state += H * W if filtered is True else 0
    return state * (group_size - 1)


def _check_case(ranks: list[dict[str, Any]], key: str, name: str, group: list[int], src: int, to_all: bool) -> None:
    frames, buffers, _, _ = CASES[name]
    item_ranges = plan_render_ranges(frames * buffers, len(group))
    for index, rank in enumerate(group):
        got = ranks[rank][key]
        where = f"{key} rank {rank}"
        _assert_equal_to_serial(got, name, where, holds_result=rank == src or to_all, is_src=rank == src)
        if rank == src:
            result = 2 * frames * buffers * H * W * 16 * (len(group) - 1) if to_all else 0
            expected = {"render_state": 2 * _state_bytes(name, len(group)), "render_result": result}
        else:
            start, stop = item_ranges[index]
            expected = {"render_gather": 2 * (stop - start) * H * W * 16}  # 3 + 1 float32 channels
        assert got["bytes"] == {k: v for k, v in expected.items() if v}, f"{where}: bytes {got['bytes']}"


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_group_render_matches_serial(world_size: int) -> None:
    ranks = [r.unwrap() for r in run_distributed(run_world, world_size, args=(world_size,), timeout_s=60)]
    everyone = list(range(world_size))
    _check_case(ranks, "filtered_src0", "filtered", everyone, 0, False)
    _check_case(ranks, "plain_src_last_all", "plain", everyone, world_size - 1, True)
    _check_case(ranks, "masks_only_src0", "masks_only", everyone, 0, False)
    for rank, result in enumerate(ranks):
        expected = "w2cs: expected shape" if rank == world_size - 1 else "rejected its input"
        assert result["bad_source"] is not None and expected in result["bad_source"], result["bad_source"]
    if world_size == 3:
        _check_case(ranks, "filtered_src1", "filtered", everyone, 1, False)
        _check_case(ranks, "sub_plain_src2", "plain", [1, 2], 2, True)


# ---- single process --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(CASES))
def test_no_group_equals_render_exactly(name: str) -> None:
    cache = _cache(name)
    w2cs, Ks = _cameras(CASES[name][0])
    counter = CommCounter()
    first = render_distributed(cache, w2cs, Ks, group=None, src=0, device=torch.device("cpu"), counter=counter)
    second = render_distributed(cache, w2cs.flip(1), Ks, group=None, src=0, device=torch.device("cpu"))
    expected = _serial(name)
    for got, want in ((first, expected["first"]), (second, expected["second"])):
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert torch.equal(cache.generator.get_state(), expected["state"])
    assert counter.pending == {}


@pytest.mark.parametrize("name", ["filtered", "plain"])
def test_warp_ranges_with_any_batching_equal_the_whole_render(name: str) -> None:
    """Pair-aligned pieces warped with other batch sizes give the serial bits, depth included."""
    w2cs, Ks = _cameras(CASES[name][0])
    whole = _cache(name)._warp_all(w2cs, Ks, want_depth=True)
    items = whole[0][0].numel() // (3 * H * W)
    for images_per_warp in (2, 6, 64):
        source = _cache(name, images_per_warp).warp_source()
        cuts = [0, 2, 10, 14, items]
        pieces = [source.warp_range(w2cs, Ks, a, b, want_depth=True) for a, b in zip(cuts, cuts[1:])]
        for part, full in zip(zip(*pieces), whole):
            assert torch.equal(torch.cat(part), full.reshape(items, *full.shape[3:]))


def test_bad_input_raises_value_error() -> None:
    cache = _cache("plain")
    w2cs, Ks = _cameras(4)
    source = cache.warp_source()
    with pytest.raises(ValueError, match="multiple of 2"):
        source.warp_range(w2cs, Ks, 1, 3)
    with pytest.raises(ValueError, match="must lie in"):
        source.warp_range(w2cs, Ks, 2, 5)
    with pytest.raises(ValueError, match="warps: expected shape"):
        cache.add_warp_noise(torch.zeros(1, 4, 3, 3, H, W))
    with pytest.raises(ValueError, match="must pass the cache"):
        render_distributed(None, w2cs, Ks, group=None, src=0, device=torch.device("cpu"))
    with pytest.raises(ValueError, match="Ks: expected shape"):
        render_distributed(cache, w2cs, Ks[:, :2], group=None, src=0, device=torch.device("cpu"))
    with pytest.raises(ValueError, match="render plan"):
        plan_render_ranges(10, 0)


# ---- the range planner -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("items", [0, 1, 2, 5, 121, 242, 363])
@pytest.mark.parametrize("group_size", [1, 2, 3, 4, 7])
def test_ranges_cover_in_order_pair_aligned_and_balanced(items: int, group_size: int) -> None:
    item_ranges = plan_render_ranges(items, group_size)
    assert len(item_ranges) == group_size and item_ranges[0][0] == 0 and item_ranges[-1][1] == items
    for (_, stop), (start, _) in zip(item_ranges, item_ranges[1:]):
        assert stop == start
    assert all(start % WARP_PAIR == 0 and start <= stop for start, stop in item_ranges)
    sizes = [stop - start for start, stop in item_ranges]
    assert max(sizes) - min(sizes) <= 2 * WARP_PAIR  # each cut lies within half a pair of its ideal point


def test_ranges_examples() -> None:
    assert plan_render_ranges(121, 2) == ((0, 60), (60, 121))
    assert plan_render_ranges(242, 3) == ((0, 80), (80, 162), (162, 242))
    assert plan_render_ranges(3, 3) == ((0, 2), (2, 2), (2, 3))
    assert plan_render_ranges(121, 3, align=8) == ((0, 40), (40, 80), (80, 121))

