"""The key-frame buffer selection (official ``Cache3D_BufferSelector``, KINDS_video.md ``buffer_selector``).

The fixture cases are checked end to end by tests/parity; here the pure selection is checked on its own: against
the fixtures' re-derived selection (aux tensors), and on hand-made masks for each quirk the fixtures cannot
separate (first near-full buffer rather than the fullest, the float32 threshold compare, ``(p + 1) * 1 - 1``,
whole-chunk ranking, N <= 2 without ranking).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gen3c_dist.geometry.buffer_selector import KeyFrameCache, select_buffers
from tests.parity.fixture_case import fixture_root

FIXTURES = sorted((fixture_root() / "buffer_selector").glob("*.json"))


def _masks(coverage_FN: list[list[float]], pixels: int = 100) -> torch.Tensor:
    """Masks [1, F, N, 1, 1, pixels] whose mean on frame f, buffer n is coverage[f][n] (a multiple of 1/pixels)."""
    F, N = len(coverage_FN), len(coverage_FN[0])
    masks = torch.zeros(1, F, N, 1, 1, pixels)
    for f in range(F):
        for n in range(N):
            masks[0, f, n, 0, 0, : round(coverage_FN[f][n] * pixels)] = 1
    return masks


def _images(masks: torch.Tensor, value: float = 0.25) -> torch.Tensor:
    B, F, N, _, H, W = masks.shape
    return torch.where(masks.bool(), torch.full((), value), torch.full((), -1.0)).expand(B, F, N, 3, H, W).clone()


@pytest.mark.parametrize("json_path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_selection_of_the_fixture_all_n_render_is_the_official_one(json_path: Path) -> None:
    """On the fixture's own all-N render: the same ranking, coverage, keep pattern and the expected bits."""
    meta = json.loads(json_path.read_text())
    t = load_file(str(json_path.with_suffix(".safetensors")))
    config = meta["config"]
    selection = select_buffers(t["rendered_all_images"], t["rendered_all_masks"],
                               frame_buffer_max=int(config["frame_buffer_max"]),
                               mask_full_threshold=float(config["mask_full_threshold"]))
    assert selection.indices_BK.tolist() == [meta["selection"]["topk_indices"]]
    assert selection.scores_BN.tolist() == [meta["selection"]["overlap_scores"]]
    assert selection.keep_BFK.tolist() == [meta["selection"]["keep_per_frame"]]
    assert torch.allclose(selection.coverage_BFK, t["coverage"], atol=0, rtol=0)
    # The official arithmetic on the same input, so the very same float32 values.
    assert torch.equal(selection.images_BFK3HW, t["rendered_warp_images"])
    assert torch.equal(selection.masks_BFK1HW, t["rendered_warp_masks"])


def test_the_first_near_full_buffer_in_rank_order_is_kept_not_the_fullest() -> None:
    # Buffer 0 ranks first (more coverage over the chunk); on frame 1 both are near full and buffer 1 is fuller.
    masks = _masks([[1.0, 0.5], [0.92, 0.97], [0.95, 0.5], [0.5, 0.91], [0.5, 0.6]])
    selection = select_buffers(_images(masks), masks)
    assert selection.scores_BN is None  # N = 2: no ranking, key-frame order
    assert selection.keep_BFK[0].tolist() == [[1, 0], [1, 0], [1, 0], [0, 1], [1, 1]]
    assert selection.masks_BFK1HW[0, 1, 1].sum() == 0 and bool((selection.images_BFK3HW[0, 1, 1] == -1).all())
    assert torch.equal(selection.masks_BFK1HW[0, 1, 0], masks[0, 1, 0])


def test_threshold_is_compared_in_float32() -> None:
    """9 of 10 pixels: the float32 mean 0.9f (0.89999998) >= float32(0.9), although it is < 0.9 in float64."""
    masks = _masks([[0.9, 0.5]], pixels=10)
    coverage = select_buffers(_images(masks), masks).coverage_BFK
    assert coverage.dtype == torch.float32 and coverage[0, 0, 0].double() < 0.9
    assert select_buffers(_images(masks), masks).keep_BFK[0].tolist() == [[1, 0]]
    masks = _masks([[0.8, 0.5]], pixels=10)
    assert select_buffers(_images(masks), masks).keep_BFK[0].tolist() == [[1, 1]]


def test_kept_pixels_go_through_p_plus_1_minus_1() -> None:
    masks = _masks([[0.5, 0.5]])
    images = _images(masks, value=1e-8)
    out = select_buffers(images, masks).images_BFK3HW
    # (1e-8 + 1) - 1 == 0 in float32: the official expression, not the identity.
    assert bool((out[masks.bool().expand_as(out)] == 0).all())
    assert bool((out[~masks.bool().expand_as(out)] == -1).all())


def test_ranking_sums_over_the_whole_chunk() -> None:
    # Key frame 2 covers frame 0 best, but key frames 1 and 0 cover more over the chunk; rank order 1, 0.
    masks = _masks([[0.3, 0.4, 0.8], [0.5, 0.6, 0.1], [0.5, 0.6, 0.1]])
    selection = select_buffers(_images(masks), masks)
    assert selection.scores_BN.tolist() == [[130.0, 160.0, 100.0]]
    assert selection.indices_BK.tolist() == [[1, 0]]
    assert torch.equal(selection.masks_BFK1HW[0, :, 0], masks[0, :, 1])
    assert torch.equal(selection.masks_BFK1HW[0, :, 1], masks[0, :, 0])


def test_one_key_frame_is_one_buffer_kept_everywhere() -> None:
    masks = _masks([[0.95], [0.2]])
    selection = select_buffers(_images(masks), masks)
    assert selection.indices_BK.tolist() == [[0]] and selection.keep_BFK[0].tolist() == [[1], [1]]
    assert torch.equal(selection.masks_BFK1HW, masks)


def _two_view_cache(**options) -> tuple[KeyFrameCache, torch.Tensor, torch.Tensor]:
    """Two key frames of a tilted plane with a nearer box, and 3 targets between them."""
    g = torch.Generator().manual_seed(5)
    H, W = 24, 32
    K = torch.tensor([[30.0, 0.0, 15.3], [0.0, 31.0, 11.8], [0.0, 0.0, 1.0]])
    depth = (2.0 + 0.02 * torch.arange(W).float()).expand(2, 1, H, W).clone()
    depth[:, :, 8:16, 10:20] = 1.3
    w2c = torch.eye(4).repeat(2, 1, 1)
    w2c[1, 0, 3] = -0.21
    w2c[1, 1, 3] = 0.03
    targets = torch.eye(4).repeat(3, 1, 1)
    targets[:, 0, 3] = torch.tensor([-0.05, -0.1, -0.16])
    targets[:, 2, 3] = 0.02
    cache = KeyFrameCache(torch.rand(1, 2, 3, H, W, generator=g) * 2 - 1, depth[None], torch.ones(1, 2, 1, H, W),
                          w2c[None], K.expand(1, 2, 3, 3), **options)
    return cache, targets[None], K.expand(1, 3, 3, 3)


@pytest.mark.parametrize("filtered", [False, True])
def test_two_key_frames_render_every_buffer_in_order(filtered: bool) -> None:
    """N = 2 <= frame_buffer_max: no top-k, both key frames in order, then the coverage rule.

    Unfiltered, both views cover >= 90% of every target, so key frame 0 alone stays (on frame 2 although key
    frame 1 covers all of it); the depth-edge filter drops coverage to ~0.7, so both stay everywhere.
    """
    options = {"filter_points_threshold": 0.05, "foreground_masking": True} if filtered else {}
    cache, w2cs, Ks = _two_view_cache(**options)
    all_images, all_masks = cache.render_all(w2cs, Ks)
    images, masks = cache.render(w2cs, Ks)
    coverage = all_masks.mean(dim=(3, 4, 5))[0]
    keep = [[1.0, 1.0]] * 3 if filtered else [[1.0, 0.0]] * 3
    if filtered:
        assert bool((coverage < 0.8).all() and (coverage > 0.6).all())
    else:
        assert bool((coverage >= 0.9).all()) and coverage[2, 1] > coverage[2, 0]
    assert cache.output_buffers == 2 and images.shape == all_images.shape
    for f in range(3):
        for n in range(2):
            assert torch.equal(masks[0, f, n], all_masks[0, f, n] * keep[f][n])
            assert torch.equal(images[0, f, n], (all_images[0, f, n] + 1) * keep[f][n] - 1)


def test_bad_cache_input_raises_value_error() -> None:
    cache, _, _ = _two_view_cache()
    images, points = cache.images, cache.points
    depth = torch.ones(1, 2, 1, *images.shape[-2:])
    w2c, K = torch.eye(4).expand(1, 2, 4, 4), torch.eye(3).expand(1, 2, 3, 3)
    with pytest.raises(ValueError, match="N >= 1"):
        KeyFrameCache(images[:, :0], depth[:, :0], depth[:, :0], w2c[:, :0], K[:, :0])
    with pytest.raises(ValueError, match="key-frame depth: expected shape"):
        KeyFrameCache(images, depth[:, :1], depth, w2c, K)
    with pytest.raises(ValueError, match="mask: values must be 0 or 1"):
        KeyFrameCache(images, depth, depth * 0.5, w2c, K)
    with pytest.raises(ValueError, match="masks: expected shape"):
        select_buffers(torch.zeros(1, 2, 3, 3, 4, 4), torch.zeros(1, 2, 2, 1, 4, 4))
    assert points.shape == (1, 2, *images.shape[-2:], 3)
