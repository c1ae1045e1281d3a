"""The shipped demo video loads back as a fresh render, and its depth and cameras re-render its own frames."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

from gen3c_dist.conditioning.video_inputs import SourceVideo, VideoSourceSpec, check_video_source, load_video_source
from gen3c_dist.demo_video import DROPOUT_FRAMES, HEIGHT, NUM_FRAMES, VIDEO_DIR, WIDTH, render_demo_video
from gen3c_dist.geometry.cache4d import Cache4D

SELF_RENDER_TOL = 1e-4  # float32 projection of a point onto its own pixel, measured at 5e-5


@functools.lru_cache(maxsize=None)
def _shipped() -> SourceVideo:
    return load_video_source(VideoSourceSpec(str(VIDEO_DIR), HEIGHT, WIDTH, NUM_FRAMES))


def test_shipped_files_are_small_and_load_back_as_a_fresh_render() -> None:
    assert sum(f.stat().st_size for f in VIDEO_DIR.iterdir()) < 3_000_000
    info = check_video_source(VideoSourceSpec(str(VIDEO_DIR), HEIGHT, WIDTH, NUM_FRAMES))
    assert (info.format, info.source_frames, info.frame_indices) == ("directory", NUM_FRAMES, tuple(range(NUM_FRAMES)))
    fresh, video = render_demo_video(), _shipped()
    # The mp4 is lossless, so the decoded frames are exactly the rendered uint8 frames.
    assert torch.equal(video.frames_T3HW, torch.from_numpy(fresh["frames"]).permute(0, 3, 1, 2).float() / 127.5 - 1)
    assert torch.equal(video.depth_T1HW, torch.from_numpy(fresh["depth"].astype(np.float32))[:, None])
    assert torch.equal(video.mask_T1HW, torch.from_numpy(fresh["mask"]).float()[:, None])
    assert torch.equal(video.w2c_T44, torch.from_numpy(fresh["w2c"]))
    assert torch.equal(video.K_T33, torch.from_numpy(fresh["intrinsics"]))


def test_the_camera_moves_and_the_dropout_has_zero_depth_under_a_mask_that_is_off() -> None:
    video = _shipped()
    centres = torch.linalg.inv(video.w2c_T44.double())[:, :3, 3]
    assert (centres[-1] - centres[0]).norm() > 0.5
    hole_frame = DROPOUT_FRAMES.start
    off = video.mask_T1HW[hole_frame, 0] == 0
    assert 0 < int(off.sum()) < HEIGHT * WIDTH // 10 and bool((video.depth_T1HW[hole_frame, 0][off] == 0).all())
    assert bool((video.mask_T1HW[0] == 1).all()) and float(video.depth_T1HW[0].min()) > 1.0


@pytest.mark.parametrize("frame", [0, DROPOUT_FRAMES.start + 5, NUM_FRAMES - 1])
def test_rendering_a_source_frame_at_its_own_camera_reproduces_it_where_the_mask_is_set(frame: int) -> None:
    video = _shipped()
    cache = Cache4D(video.frames_T3HW, video.depth_T1HW, video.mask_T1HW, video.w2c_T44, video.K_T33,
                    filter_points_threshold=0.05)
    images, masks = cache.render(video.w2c_T44[frame][None, None], video.K_T33[frame][None, None],
                                 start_frame_idx=frame)
    kept = cache.masks[frame, 0]  # the loader's mask and the depth-edge filter
    assert int(kept.sum()) > 0.6 * HEIGHT * WIDTH
    assert bool((masks[0, 0, 0, 0][kept] == 1).all())
    assert float((images[0, 0, 0] - video.frames_T3HW[frame])[:, kept].abs().max()) < SELF_RENDER_TOL
    # Masked-off pixels (the dropout) put no point in the cache; the filter keeps their neighbours out too.
    assert bool((masks[0, 0, 0, 0][video.mask_T1HW[frame, 0] == 0] == 0).all())
