"""ViPE folders (gen3c_dist.conditioning.vipe_inputs): the resize rule, padding, the mask flag, and bad inputs."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from gen3c_dist.conditioning.video_inputs import VideoSourceSpec, check_video_source, load_video_source
from gen3c_dist.conditioning.vipe_inputs import load_vipe_arrays, vipe_frame_indices, vipe_resize_hw
from tests.video_utils import H, T, W, small_video, write_png_zip, write_vipe

RUN_H, RUN_W = 16, 32  # a 2:1 run from the 3:4 clip: resized to 18 x 32, then 2 rows cropped


def _spec(root: Path, **kwargs) -> VideoSourceSpec:
    args = {"height": RUN_H, "width": RUN_W, "num_frames": T, **kwargs}
    return VideoSourceSpec(str(root), **args)


def _refused(spec: VideoSourceSpec, *needles: str) -> None:
    for entry in (check_video_source, load_video_source):
        with pytest.raises(ValueError) as err:
            entry(spec)
        for needle in needles:
            assert needle in str(err.value), str(err.value)


@pytest.mark.parametrize("run, resize", [((704, 1280), (720, 1280)), ((352, 640), (360, 640)),
                                         ((128, 192), (128, 192)), ((480, 640), (480, 640)), ((16, 32), (18, 32))])
def test_resize_rule_reduces_to_the_official_720_then_704(run, resize) -> None:
    assert vipe_resize_hw(*run) == resize


def test_frame_indices_clamp_and_pad_as_the_official_loader() -> None:
    assert vipe_frame_indices(1, 3, 5) == [1, 2, 3]
    assert vipe_frame_indices(3, 4, 5) == [3, 4, 4, 4]
    assert vipe_frame_indices(9, 2, 5) == [4, 4]
    with pytest.raises(ValueError, match="need start >= 0"):
        vipe_frame_indices(-1, 2, 5)


def test_source_is_the_official_arrays_at_the_resize_rule_with_padding(tmp_path: Path) -> None:
    root = write_vipe(tmp_path / "v")
    spec = _spec(root, start_frame=3, num_frames=4)
    info = check_video_source(spec)
    assert (info.format, info.source_frames, info.frame_indices) == ("vipe", T, (3, 4, 4, 4))
    source = load_video_source(spec)
    official = load_vipe_arrays(str(root), 3, resize_hw=(18, 32), crop_hw=(RUN_H, RUN_W), num_frames=4)
    for got, want in zip((source.frames_T3HW, source.depth_T1HW, source.mask_T1HW, source.w2c_T44, source.K_T33),
                         official):
        assert got.dtype == torch.float32 and torch.equal(got, want)
    assert torch.equal(source.frames_T3HW[2], source.frames_T3HW[3])  # the last frame repeated
    video = small_video()
    K = torch.from_numpy(video["intrinsics"][4])
    # fy, cy scaled by 18/24 then cy shifted by the 1-row crop; fx, cx unchanged (same width).
    expected = torch.tensor([[K[0, 0], 0, K[0, 2]], [0, K[1, 1] * 0.75, K[1, 2] * 0.75 - 1], [0, 0, 1]])
    torch.testing.assert_close(source.K_T33[3], expected, rtol=0, atol=1e-5)
    assert bool((source.mask_T1HW == 1).all())  # read_mask off: ones


def test_mask_flag_reads_mask_zip(tmp_path: Path) -> None:
    video = small_video()
    video["mask"][1, 4:12, 8:20] = False
    root = write_vipe(tmp_path / "v", video, masks=True)
    assert bool((load_video_source(_spec(root)).mask_T1HW == 1).all())  # the official default ignores mask/
    masked = load_video_source(_spec(root, vipe_read_mask=True, height=H, width=W))
    assert torch.equal(masked.mask_T1HW[:, 0], torch.from_numpy(video["mask"]).float())


def test_start_beyond_the_end_is_refused(tmp_path: Path) -> None:
    _refused(_spec(write_vipe(tmp_path / "v"), start_frame=T), f"has {T} frames", f"cannot start at frame {T}")


def test_exr_without_channel_z(tmp_path: Path) -> None:
    _refused(_spec(write_vipe(tmp_path / "v", depth_channel="R")), "depth/clip.zip: 00000.exr",
             "has no depth channel 'Z'", "['R']")


def test_pose_missing_for_a_frame(tmp_path: Path) -> None:
    root = write_vipe(tmp_path / "v", inds=np.array([0, 1, 3, 4]))
    _refused(_spec(root), "pose/clip.npz", "has no entry for frame 2")


def test_non_rigid_pose(tmp_path: Path) -> None:
    root = write_vipe(tmp_path / "v")
    pose = dict(np.load(root / "pose" / "clip.npz"))
    pose["data"][2, :3, :3] *= 2.0
    np.savez(root / "pose" / "clip.npz", **pose)
    _refused(_spec(root), "pose/clip.npz (frames counted from clip frame 0): the inverted c2w",
             "w2c of frame 2 is not a rigid pose")


def test_zero_depth_with_the_default_all_ones_mask(tmp_path: Path) -> None:
    video = small_video()
    video["depth"][3, :, :6] = 0.0
    _refused(_spec(write_vipe(tmp_path / "v", video)), "depth/clip.zip: 00003.exr", "frame 3:",
             "where the mask is on")


def test_mask_flag_without_masks(tmp_path: Path) -> None:
    root = write_vipe(tmp_path / "v")
    _refused(_spec(root, vipe_read_mask=True), "vipe_read_mask is set but there is no mask/clip.zip")
    write_png_zip(root / "mask" / "clip.zip", list(small_video()["mask"])[:2])
    _refused(_spec(root, vipe_read_mask=True), "mask/clip.zip: has no member 00002.png")


def test_missing_files_and_bad_intrinsics(tmp_path: Path) -> None:
    root = write_vipe(tmp_path / "a")
    np.savez(root / "intrinsics" / "clip.npz", inds=np.arange(T), data=np.ones((T, 5), np.float32))
    _refused(_spec(root), "intrinsics/clip.npz: intrinsics of frame 0 must be [4]")
    root = write_vipe(tmp_path / "b")
    (root / "depth" / "clip.zip").unlink()
    _refused(_spec(root), "clip 'clip' has no depth file")
    with zipfile.ZipFile(root / "depth" / "clip.zip", "w") as archive:
        archive.writestr("00000.exr", b"not an exr")
    _refused(_spec(root), "depth/clip.zip: 00000.exr: cannot be read as an EXR image")
    (root / "rgb" / "clip.mp4").unlink()
    _refused(_spec(root), "rgb/ holds 0 mp4 files")
