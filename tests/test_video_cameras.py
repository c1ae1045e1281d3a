"""Camera paths for a video source: built-in offsets composed per frame, and trajectory files as targets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gen3c_dist.geometry.camera import (generate_trajectory, generate_video_trajectory, load_trajectory_file,
                                        trajectory_matrices)
from tests.video_utils import small_video

ARGS = {"camera_rotation": "trajectory_aligned", "movement_distance": 0.4, "center_depth": 1.0}


def _source(frames: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    v = small_video(frames)
    K = torch.from_numpy(v["intrinsics"]).clone()
    K[:, 0, 0] += torch.arange(frames, dtype=torch.float32)  # a zoom, so "not repeated" is visible
    return torch.from_numpy(v["w2c"]), K


def test_offsets_are_composed_onto_each_source_frame_and_K_is_kept() -> None:
    w2c, K = _source()
    w2cs, Ks = generate_video_trajectory("right", source_w2c_N44=w2c, source_K_N33=K, **ARGS)
    L = trajectory_matrices("right", num_frames=6, **ARGS)
    torch.testing.assert_close(w2cs, torch.stack([L[i] @ w2c[i] for i in range(6)]), rtol=0, atol=1e-6)
    assert torch.equal(Ks, K) and Ks.data_ptr() != K.data_ptr()
    assert torch.equal(w2cs[0], w2c[0])  # L_0 is the identity: frame 0 keeps its source camera
    assert not torch.allclose(w2cs[5], w2c[5], atol=1e-3)


def test_a_still_camera_gives_the_image_mode_path() -> None:
    w2c, K = _source()
    still_w2c, still_K = w2c[2].expand(6, 4, 4), K[2].expand(6, 3, 3)
    video = generate_video_trajectory("zoom_in", source_w2c_N44=still_w2c, source_K_N33=still_K, **ARGS)
    image = generate_trajectory("zoom_in", num_frames=6, initial_w2c_44=w2c[2], initial_K_33=K[2], **ARGS)
    assert torch.equal(video[0], image[0]) and torch.equal(video[1], image[1])


def test_float64_source_cameras_give_float32_and_the_same_path() -> None:
    w2c, K = _source()
    w2cs, Ks = generate_video_trajectory("up", source_w2c_N44=w2c.double(), source_K_N33=K.double(), **ARGS)
    want = generate_video_trajectory("up", source_w2c_N44=w2c, source_K_N33=K, **ARGS)
    assert w2cs.dtype == Ks.dtype == torch.float32
    assert torch.equal(w2cs, want[0]) and torch.equal(Ks, want[1])


def test_shape_errors() -> None:
    w2c, K = _source()
    with pytest.raises(ValueError, match=r"source_w2c: expected shape \[N, 4, 4\]"):
        generate_video_trajectory("left", source_w2c_N44=w2c[0], source_K_N33=K, **ARGS)
    with pytest.raises(ValueError, match=r"source_K: expected shape \[6, 3, 3\]"):
        generate_video_trajectory("left", source_w2c_N44=w2c, source_K_N33=K[0], **ARGS)


def test_trajectory_file_as_a_video_target_takes_the_source_K_by_default(tmp_path: Path) -> None:
    w2c, K = _source()
    path = tmp_path / "path.npz"
    targets = w2c.flip(0).numpy()
    np.savez(path, w2c=targets)
    w2cs, Ks = load_trajectory_file(path, num_frames=6, default_intrinsics_N33=K)
    assert torch.equal(w2cs, torch.from_numpy(targets)) and torch.equal(Ks, K)  # absolute poses, source K
    np.savez(path, w2c=targets, intrinsics=K[0].numpy())
    assert torch.equal(load_trajectory_file(path, num_frames=6, default_intrinsics_N33=K)[1], K[0].expand(6, 3, 3))
    np.savez(path, w2c=targets)
    with pytest.raises(ValueError, match="missing key 'intrinsics'"):
        load_trajectory_file(path, num_frames=6)
    with pytest.raises(ValueError, match=r"default intrinsics: expected shape \[6, 3, 3\]"):
        load_trajectory_file(path, num_frames=6, default_intrinsics_N33=K[:5])
