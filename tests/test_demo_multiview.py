"""The shipped multi-view demo: it matches a fresh render, loads through the official-layout loader, its key views
are exact (each re-renders itself), and the buffer selection along its path keeps the views that see it."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from gen3c_dist.conditioning.multiview_inputs import MultiviewInputs, load_multiview_npz
from gen3c_dist.demo_multiview import HEIGHT, MULTIVIEW_DIR, NPZ_NAME, NUM_KEY_VIEWS, multiview_scene

SHIPPED = MULTIVIEW_DIR / NPZ_NAME


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@functools.lru_cache(maxsize=None)
def _inputs() -> MultiviewInputs:
    return load_multiview_npz(SHIPPED)


def test_shipped_file_matches_a_fresh_render_and_loads() -> None:
    fresh = multiview_scene()
    with np.load(SHIPPED, allow_pickle=False) as shipped:
        assert sorted(shipped.files) == sorted(fresh)
        for name, array in fresh.items():
            assert np.array_equal(shipped[name], array), name
    inputs = _inputs()
    assert inputs.key_frames.num == NUM_KEY_VIEWS and inputs.key_frames.size_hw == (HEIGHT, 192)
    assert inputs.path.num_frames == 121 and inputs.path.num_chunks == 1
    # The path passes through every key pose (frames 0, 40, 80, 120) and starts at key view 0, whose image
    # conditions chunk 0.
    for view, frame in enumerate((0, 40, 80, 120)):
        assert torch.allclose(inputs.path.w2cs_F44[frame], inputs.key_frames.w2c_N44[view], atol=1e-6)
    assert SHIPPED.stat().st_size < 1_000_000


def test_each_key_view_rendered_at_its_own_camera_reproduces_its_image() -> None:
    """With the official depth-edge filter, every pixel whose own point is splatted comes back within 1e-3.

    (Without the filter, pixels beside a depth edge pick up the nearer neighbour through the soft z-buffer at
    an exact source pose, KINDS_geometry.md "Why some configurations are absent"; the filter removes them.)
    """
    kf = _inputs().key_frames
    cache = kf.cache(filter_points_threshold=0.05, foreground_masking=False)
    images, masks = cache.render_all(kf.w2c_N44[None], kf.K_N33[None])
    for view in range(NUM_KEY_VIEWS):
        own_HW = cache.masks[0, view, 0] & masks[0, view, view, 0].bool()
        error_3P = (images[0, view, view] - kf.images_N3HW[view])[:, own_HW]
        assert own_HW.float().mean() > 0.6, f"view {view}: only {own_HW.float().mean():.2f} of the pixels kept"
        assert error_3P.abs().max() < 1e-3, f"view {view}: max error {error_3P.abs().max():.2e}"


def test_selection_along_the_path_keeps_the_views_that_see_it() -> None:
    """Chunk 0 (the whole path), filter off: the two middle views cover the sweep best and are kept, in rank
    order 1, 2. At key view 1's pose (frame 40) it alone covers the frame fully, so only it stays; at key view
    2's (frame 80) only that one; at the two ends neither covers 90%, so both stay."""
    inputs = _inputs()
    w2cs, Ks = inputs.path.chunk(0)
    cache = inputs.key_frames.cache(filter_points_threshold=1.0, foreground_masking=False)
    selection = cache.select(*cache.render_all(w2cs, Ks))
    assert selection.indices_BK.tolist() == [[1, 2]]
    scores = selection.scores_BN[0]
    assert scores[1] > scores[2] > max(scores[0], scores[3])
    keep, coverage = selection.keep_BFK[0], selection.coverage_BFK[0]
    at_view_1, at_view_2 = 40, 80
    assert keep[at_view_1].tolist() == [1, 0] and coverage[at_view_1, 0] == 1.0
    assert keep[at_view_2].tolist() == [0, 1] and coverage[at_view_2, 1] == 1.0
    assert keep[0].tolist() == [1, 1] and keep[-1].tolist() == [1, 1]
    assert bool((coverage[[0, -1]] < 0.9).all() and (coverage > 0.6).all())
    # The rule fires on the contiguous frames 15-106: key view 1 alone up to frame 66, key view 2 alone after.
    alone = keep.sum(dim=1) == 1
    assert torch.nonzero(alone).flatten().tolist() == list(range(15, 107))
    assert bool((keep[15:67, 1] == 0).all() and (keep[67:107, 0] == 0).all())
    assert bool((selection.masks_BFK1HW[0, at_view_1, 1] == 0).all())
