"""The key-frame (multi-view) render spread over a group (gloo, 1-3 processes) equals the serial render bit for bit.

``render_distributed`` splits the all-N warp of ``KeyFrameCache`` over the ranks exactly as it splits a Cache3D
render (pair-aligned item ranges), gathers it on the source and runs the buffer selection there, so the selected
pair must be the serial ``cache.render`` output. Scenes are the ``buffer_selector`` fixtures' key frames (N = 3
with the filter and foreground masking on, N = 4 with the filter off) and a two-view case (N = 2, no ranking),
with 5 targets so the B x F x N items are odd for N = 3 and pairs cross frames.
"""

from __future__ import annotations

import functools
from typing import Any, Optional

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from gen3c_dist.geometry.buffer_selector import KeyFrameCache
from gen3c_dist.parallel.render_parallel import plan_render_ranges, render_distributed
from tests.dist_utils import run_distributed
from tests.parity.fixture_case import DEFAULT_FIXTURE_DIR

FIXTURE_DIR = DEFAULT_FIXTURE_DIR / "buffer_selector"
CASES = {  # name -> (fixture case, filter threshold, foreground masking, key frames kept)
    "n3_fg": ("n3_f3_filter_on_fg_ks_fallback", 0.05, True, 3),
    "n4_plain": ("n4_f4_fg_filter_off_second_ranked_buffer_kept", 1.0, False, 4),
    "n2_fg": ("n4_f4_fg_filter_off_second_ranked_buffer_kept", 1.0, True, 2),
}
FRAMES = 5


pytestmark = pytest.mark.usefixtures("single_thread")  # the gloo ranks run one thread each (conftest.py)


def _scene(name: str) -> tuple[KeyFrameCache, torch.Tensor, torch.Tensor]:
    stem, threshold, foreground, num_keys = CASES[name]
    t = load_file(str(FIXTURE_DIR / f"{stem}.safetensors"))
    keys = slice(0, num_keys)
    cache = KeyFrameCache(t["images_key_frames"][None, keys], t["depth_key_frames"][None, keys],
                          t["mask_key_frames"][None, keys], t["w2cs_key_frames"][None, keys],
                          t["K_key_frames"][None, keys], filter_points_threshold=threshold,
                          foreground_masking=foreground)
    w2cs = torch.cat([t["target_w2cs"], t["target_w2cs"].flip(0)])[:FRAMES]
    Ks = torch.cat([t["target_intrinsics"], t["target_intrinsics"].flip(0)])[:FRAMES]
    return cache, w2cs[None], Ks[None]


@functools.lru_cache(maxsize=None)
def _serial(name: str) -> tuple[torch.Tensor, torch.Tensor]:
    cache, w2cs, Ks = _scene(name)
    return cache.render(w2cs, Ks)


def _render_case(name: str, group: Any, src: int, *, to_all: bool = False) -> tuple[Any, Any]:
    is_src = group is None or dist.get_rank() == src
    cache, w2cs, Ks = _scene(name) if is_src else (None, None, None)
    return render_distributed(cache, w2cs, Ks, group=group, src=src, device=torch.device("cpu"), to_all=to_all)


def _bad_source(group: Any, src: int) -> Optional[str]:
    """The source passes Ks for fewer frames than its w2cs; every rank must raise rather than hang."""
    is_src = group is None or dist.get_rank() == src
    cache, w2cs, Ks = _scene("n3_fg") if is_src else (None, None, None)
    try:
        render_distributed(cache, w2cs, None if Ks is None else Ks[:, :2], group=group, src=src,
                           device=torch.device("cpu"))
    except ValueError as exc:
        return str(exc)
    return None


def run_world(env: Any, world_size: int) -> dict[str, Any]:
    world = dist.group.WORLD if world_size > 1 else None
    out = {"n3_fg_src0": _render_case("n3_fg", world, 0),
           "n4_plain_src_last_all": _render_case("n4_plain", world, world_size - 1, to_all=True),
           "n2_fg_src0": _render_case("n2_fg", world, 0),
           "bad_source": _bad_source(world, 0)}
    if world_size == 3:
        out["n3_fg_src1_all"] = _render_case("n3_fg", world, 1, to_all=True)  # the source warps the middle range
    return out


def _check(ranks: list[dict[str, Any]], key: str, name: str, src: int, to_all: bool) -> None:
    want_images, want_masks = _serial(name)
    for rank, result in enumerate(ranks):
        images, masks = result[key]
        if rank == src or to_all:
            assert torch.equal(images, want_images) and torch.equal(masks, want_masks), f"{key}: rank {rank} differs"
        else:
            assert images is None and masks is None, f"{key}: rank {rank} got a result off the source"


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_group_keyframe_render_matches_serial(world_size: int) -> None:
    ranks = [r.unwrap() for r in run_distributed(run_world, world_size, args=(world_size,), timeout_s=60)]
    _check(ranks, "n3_fg_src0", "n3_fg", 0, False)
    _check(ranks, "n4_plain_src_last_all", "n4_plain", world_size - 1, True)
    _check(ranks, "n2_fg_src0", "n2_fg", 0, False)
    if world_size == 3:
        _check(ranks, "n3_fg_src1_all", "n3_fg", 1, True)
    for rank, result in enumerate(ranks):
        expected = "Ks: expected shape" if rank == 0 else "rejected its input"
        assert result["bad_source"] is not None and expected in result["bad_source"], result["bad_source"]


def test_the_cases_split_pairs_across_frames_and_select() -> None:
    """Guard the premise: N = 3 gives an odd item count (a pair spans two frames and two ranks' ranges are
    uneven), the ranking picks two of N, and the coverage rule does not blank every frame."""
    cache, w2cs, Ks = _scene("n3_fg")
    assert cache.warp_source().num_items(FRAMES) == 15
    assert plan_render_ranges(15, 2) == ((0, 8), (8, 15))
    images, masks = _serial("n4_plain")
    assert images.shape[2] == 2 and bool((masks.sum(dim=(3, 4, 5)) > 0).any(dim=2).all())
    assert _serial("n2_fg")[0].shape[2] == 2
