"""The 4D-cache render of a chunk spread over a group (gloo, 1-3 processes) equals the serial Cache4D render.

Target frame i warps source frame s + i, so each rank is sent only the source frames its item range touches; the
pieces gathered at the source must be the serial render bit for bit (CPU fp32), and the bytes must be exactly the
header, the cameras and each rank's own frames.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import pytest
import torch
import torch.distributed as dist

from gen3c_dist.geometry.cache3d import item_frames
from gen3c_dist.geometry.camera import generate_video_trajectory
from gen3c_dist.geometry.cache4d import Cache4D
from gen3c_dist.parallel.comm_counter import CommCounter
from gen3c_dist.parallel.render_parallel import HEADER_FIELDS, plan_render_ranges, render_distributed
from tests.video_utils import small_video_tensors

T, H, W = 11, 24, 32
# name -> (filter threshold, foreground masking, start frame, chunk frames); odd chunks leave a half pair
CASES = {"fg": (0.05, True, 2, 7), "plain": (1.0, False, 0, 11), "late": (0.05, False, 8, 3)}


pytestmark = pytest.mark.usefixtures("single_thread")  # the gloo ranks run one thread each (conftest.py)


@functools.lru_cache(maxsize=None)
def _video() -> dict[str, torch.Tensor]:
    return small_video_tensors(T, H, W)


def _cache(name: str) -> Cache4D:
    threshold, fg, _, _ = CASES[name]
    v = _video()
    return Cache4D(v["frames"], v["depth"], v["mask"], v["w2c"], v["K"], filter_points_threshold=threshold,
                   foreground_masking=fg, images_per_warp=4)


def _chunk_cameras(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    _, _, start, frames = CASES[name]
    v = _video()
    w2cs, Ks = generate_video_trajectory("left", camera_rotation="center_facing", movement_distance=0.3,
                                         center_depth=1.0, source_w2c_N44=v["w2c"], source_K_N33=v["K"])
    return w2cs[None, start:start + frames], Ks[None, start:start + frames]


@functools.lru_cache(maxsize=None)
def _serial(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    return _cache(name).render(*_chunk_cameras(name), start_frame_idx=CASES[name][2])


# ---- rank bodies -----------------------------------------------------------------------------------------------
def _render_case(name: str, group: Any, src: int, *, to_all: bool = False) -> dict[str, Any]:
    is_src = group is None or dist.get_rank() == src
    cache = _cache(name) if is_src else None
    w2cs, Ks = _chunk_cameras(name) if is_src else (None, None)
    counter = CommCounter()
    got = render_distributed(cache, w2cs, Ks, group=group, src=src, device=torch.device("cpu"), to_all=to_all,
                             counter=counter, start_frame_idx=CASES[name][2])
    return {"result": got, "bytes": counter.pending}


def _bad_chunk(group: Any, src: int) -> Optional[str]:
    """The source asks for a chunk that runs past the video's end; every rank must raise rather than hang."""
    is_src = group is None or dist.get_rank() == src
    w2cs, Ks = _chunk_cameras("late")
    try:
        render_distributed(_cache("late") if is_src else None, w2cs if is_src else None, Ks if is_src else None,
                           group=group, src=src, device=torch.device("cpu"), start_frame_idx=9)
    except ValueError as exc:
        return str(exc)
    return None


def run_world(env: Any, world_size: int) -> dict[str, Any]:
    world = dist.group.WORLD if world_size > 1 else None
    out = {"fg_src0": _render_case("fg", world, 0)}
    out["plain_src_last_all"] = _render_case("plain", world, world_size - 1, to_all=True)
    out["late_src0"] = _render_case("late", world, 0)
    out["bad_chunk"] = _bad_chunk(world, world_size - 1)
    if world_size == 3:
        out["fg_src1"] = _render_case("fg", world, 1)
        sub = dist.new_group([1, 2])
        if env.rank in (1, 2):
            out["sub_fg_src2"] = _render_case("fg", sub, 2, to_all=True)
    return out


# ---- checks ----------------------------------------------------------------------------------------------------
def _expected_bytes(name: str, group: list[int], rank: int, src: int, to_all: bool) -> dict[str, int]:
    _, fg, _, frames = CASES[name]
    item_ranges = plan_render_ranges(frames, len(group))
    if rank != src:
        start, stop = item_ranges[group.index(rank)]
        return {"render_gather": (stop - start) * H * W * 16} if stop > start else {}  # 3 + 1 float32 channels
    cameras = (len(HEADER_FIELDS) * 8 + frames * 25 * 4) * (len(group) - 1)
    per_frame = H * W * (6 * 4 + 1 + (1 if fg else 0))  # images and points float32, masks (and boundary) uint8
    frames_sent = 0
    for index, peer in enumerate(group):
        if peer != src:
            lo, hi = item_frames(item_ranges[index], batch=1, num_frames=frames, buffers=1)
            frames_sent += hi - lo
    expected = {"render_state": cameras + frames_sent * per_frame,
                "render_result": frames * H * W * 16 * (len(group) - 1) if to_all else 0}
    return {kind: count for kind, count in expected.items() if count}


def _check_case(ranks: list[dict[str, Any]], key: str, name: str, group: list[int], src: int, to_all: bool) -> None:
    want = _serial(name)
    for rank in group:
        got = ranks[rank][key]
        where = f"{key} rank {rank}"
        if rank == src or to_all:
            assert all(torch.equal(g, w) for g, w in zip(got["result"], want)), f"{where}: differs from serial"
        else:
            assert got["result"] == (None, None), f"{where}: returned a result off the source"
        assert got["bytes"] == _expected_bytes(name, group, rank, src, to_all), f"{where}: bytes {got['bytes']}"


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_group_render_of_a_video_chunk_matches_serial(world_size: int) -> None:
    from tests.dist_utils import run_distributed

    ranks = [r.unwrap() for r in run_distributed(run_world, world_size, args=(world_size,), timeout_s=60)]
    everyone = list(range(world_size))
    _check_case(ranks, "fg_src0", "fg", everyone, 0, False)
    _check_case(ranks, "plain_src_last_all", "plain", everyone, world_size - 1, True)
    _check_case(ranks, "late_src0", "late", everyone, 0, False)
    for rank, result in enumerate(ranks):
        expected = "needs source frames [9, 12)" if rank == world_size - 1 else "rejected its input"
        assert result["bad_chunk"] is not None and expected in result["bad_chunk"], result["bad_chunk"]
    if world_size == 3:
        _check_case(ranks, "fg_src1", "fg", everyone, 1, False)
        _check_case(ranks, "sub_fg_src2", "fg", [1, 2], 2, True)


def test_no_group_equals_render_and_the_serial_render_has_content() -> None:
    for name in CASES:
        counter = CommCounter()
        got = render_distributed(_cache(name), *_chunk_cameras(name), group=None, src=0, device=torch.device("cpu"),
                                 counter=counter, start_frame_idx=CASES[name][2])
        want = _serial(name)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1]) and counter.pending == {}
        assert want[0].shape == (1, CASES[name][3], 1, 3, H, W) and float(want[1].mean()) > 0.1


def test_item_frames() -> None:
    assert item_frames((0, 0), batch=1, num_frames=7, buffers=1) == (0, 0)
    assert item_frames((2, 6), batch=1, num_frames=7, buffers=1) == (2, 6)
    assert item_frames((3, 8), batch=1, num_frames=4, buffers=2) == (1, 4)
    assert item_frames((6, 10), batch=2, num_frames=4, buffers=1) == (0, 4)  # crosses into batch 1
