"""Directory and .pt source videos (gen3c_dist.conditioning.video_inputs): loading, and one error per bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gen3c_dist.conditioning.video_inputs import (VideoSourceSpec, check_video_source, detect_format,
                                                  load_dynamic_inputs, load_video_source)
from gen3c_dist.geometry.cache4d import Cache4D
from tests.video_utils import H, T, W, small_video, write_directory, write_pt


def _spec(path: Path, **kwargs) -> VideoSourceSpec:
    args = {"height": H, "width": W, "num_frames": T, **kwargs}
    return VideoSourceSpec(str(path), **args)


def _refused(spec: VideoSourceSpec, *needles: str) -> str:
    """Both entry points refuse ``spec`` with one ValueError holding every needle."""
    for entry in (check_video_source, load_video_source):
        with pytest.raises(ValueError) as err:
            entry(spec)
        for needle in needles:
            assert needle in str(err.value), str(err.value)
    return str(err.value)


def test_directory_loads_as_float32_with_the_window_and_float64_cameras_cast(tmp_path: Path) -> None:
    video = small_video()
    camera = {"w2c": video["w2c"].astype(np.float64), "intrinsics": video["intrinsics"].astype(np.float64)}
    folder = write_directory(tmp_path / "src", video, **{"camera.npz": camera})
    official = load_dynamic_inputs(folder)
    assert official[3].dtype == torch.float64  # the official reader keeps the stored dtype
    source = load_video_source(_spec(folder, num_frames=3, start_frame=2))
    assert all(t.dtype == torch.float32 for t in (source.frames_T3HW, source.depth_T1HW, source.mask_T1HW,
                                                  source.w2c_T44, source.K_T33))
    assert source.num_frames == 3 and (source.height, source.width) == (H, W)
    frames = torch.from_numpy(video["frames"][2:]).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert torch.equal(source.frames_T3HW, frames)
    assert torch.equal(source.w2c_T44, torch.from_numpy(video["w2c"][2:]))  # float32-representable: exact
    assert torch.equal(source.depth_T1HW, torch.from_numpy(video["depth"][2:])[:, None])
    # The official Cache4D raises a dtype mismatch on float64 cameras; ours renders the cast source.
    cache = Cache4D(source.frames_T3HW, source.depth_T1HW, source.mask_T1HW, official[3][2:], official[4][2:])
    images, masks = cache.render(source.w2c_T44[None], source.K_T33[None])
    assert images.shape == (1, 3, 1, 3, H, W) and float(masks.mean()) > 0.9


def test_pt_loads_as_saved_and_as_a_source(tmp_path: Path) -> None:
    path = write_pt(tmp_path / "data.pt")
    official = load_dynamic_inputs(path)
    assert isinstance(official, tuple) and len(official) == 5
    info = check_video_source(_spec(path))
    assert (info.format, info.source_frames) == ("pt", T)
    source = load_video_source(_spec(path))
    assert torch.equal(source.frames_T3HW, official[0]) and torch.equal(source.K_T33, official[4])


def test_format_detection(tmp_path: Path) -> None:
    assert detect_format(write_directory(tmp_path / "d")) == "directory"
    assert detect_format(write_pt(tmp_path / "x.pt")) == "pt"
    (tmp_path / "v" / "rgb").mkdir(parents=True)
    assert detect_format(tmp_path / "v") == "vipe"
    with pytest.raises(ValueError, match="not a .pt file, a folder with rgb.mp4"):
        detect_format(tmp_path / "missing")


# ---- one error per bad input -----------------------------------------------------------------------------------
def test_lengths_differ(tmp_path: Path) -> None:
    video = small_video()
    folder = write_directory(tmp_path / "d", video, **{"depth.npz": {"depth": video["depth"][:-1]}})
    _refused(_spec(folder), "frame counts differ", "rgb.mp4: 5", "depth.npz 'depth': 4")


def test_camera_length_differs_in_pt(tmp_path: Path) -> None:
    video = small_video()
    path = write_pt(tmp_path / "data.pt", video)
    items = list(torch.load(path, weights_only=True))
    items[3] = items[3][:3]
    write_pt(path, items=items)
    _refused(_spec(path), "frame counts differ", "item 3 (w2c): 3")


@pytest.mark.parametrize("file, content, needles", [
    ("depth.npz", {"d": np.ones((T, H, W), np.float32)}, ["depth.npz", "missing ['depth']", "extra ['d']"]),
    ("camera.npz", "extra", ["camera.npz", "extra ['K']"]),
    ("mask.npz", {}, ["mask.npz", "missing ['mask']"]),
])
def test_missing_or_extra_key(tmp_path: Path, file: str, content, needles: list[str]) -> None:
    video = small_video()
    if content == "extra":
        content = {"w2c": video["w2c"], "intrinsics": video["intrinsics"], "K": video["intrinsics"]}
    folder = write_directory(tmp_path / "d", video, **{file: content})
    _refused(_spec(folder), *needles)


def test_pt_with_four_items(tmp_path: Path) -> None:
    path = write_pt(tmp_path / "data.pt")
    write_pt(path, items=list(torch.load(path, weights_only=True))[:4])
    _refused(_spec(path), "data.pt", "tuple or list of 5 tensors", "(4)")


@pytest.mark.parametrize("break_pose, needle", [
    (lambda w2c: w2c.__setitem__((2, slice(0, 3), slice(0, 3)), 0.0), "w2c of frame 2 is not invertible"),
    (lambda w2c: w2c.__setitem__((1, slice(0, 3), slice(0, 3)), 1.5 * w2c[1, :3, :3]), "w2c of frame 1 is not a rigid"),
])
def test_non_invertible_or_non_rigid_pose(tmp_path: Path, break_pose, needle: str) -> None:
    video = small_video()
    w2c = video["w2c"].copy()
    break_pose(w2c)
    folder = write_directory(tmp_path / "d", video, **{"camera.npz": {"w2c": w2c, "intrinsics": video["intrinsics"]}})
    _refused(_spec(folder), "camera.npz 'w2c'", needle)


def test_negative_focal_length(tmp_path: Path) -> None:
    video = small_video()
    K = video["intrinsics"].copy()
    K[3, 1, 1] = -K[3, 1, 1]
    folder = write_directory(tmp_path / "d", video, **{"camera.npz": {"w2c": video["w2c"], "intrinsics": K}})
    _refused(_spec(folder), "camera.npz 'intrinsics'", "frame 3", "must be positive")


def test_video_shorter_than_the_requested_window(tmp_path: Path) -> None:
    folder = write_directory(tmp_path / "d")
    _refused(_spec(folder, start_frame=3, num_frames=3), "rgb.mp4: has 5 frames", "3 frames from frame 3",
             "not padded")


@pytest.mark.parametrize("value", [0.0, -1.0, np.nan])
def test_bad_depth_where_the_mask_is_on(tmp_path: Path, value: float) -> None:
    video = small_video()
    video["depth"][2, 7, 11] = value
    folder = write_directory(tmp_path / "d", video)
    _refused(_spec(folder), "depth.npz 'depth'", "frame 2: 1 pixel(s)", "x=11, y=7", "where the mask is on")


def test_zero_depth_where_the_mask_is_off_is_kept(tmp_path: Path) -> None:
    video = small_video()
    video["depth"][2, 5:9, 10:14] = 0.0
    video["mask"][2, 5:9, 10:14] = False
    source = load_video_source(_spec(write_directory(tmp_path / "d", video)))
    assert float(source.depth_T1HW[2, 0, 5:9, 10:14].abs().max()) == 0.0  # as given, not replaced
    assert float(source.mask_T1HW[2, 0, 5:9, 10:14].max()) == 0.0


def test_mask_values_other_than_0_and_1(tmp_path: Path) -> None:
    video = small_video()
    mask = video["mask"].astype(np.uint8) * 255
    folder = write_directory(tmp_path / "d", video, **{"mask.npz": {"mask": mask}})
    _refused(_spec(folder), "mask.npz 'mask'", "values must be 0 or 1", "holds [255")


@pytest.mark.parametrize("make", ["directory", "pt"])
def test_resolution_other_than_the_run(tmp_path: Path, make: str) -> None:
    path = write_directory(tmp_path / "d") if make == "directory" else write_pt(tmp_path / "data.pt")
    message = _refused(_spec(path, height=2 * H, width=2 * W), f"is {H}x{W}", f"the run needs {2 * H}x{2 * W}",
                       "not resized")
    assert ("rgb.mp4" if make == "directory" else "item 0 (image)") in message


def test_pt_image_outside_minus_one_one(tmp_path: Path) -> None:
    path = write_pt(tmp_path / "data.pt")
    items = list(torch.load(path, weights_only=True))
    items[0] = (items[0] + 1) * 127.5  # 0..255 pasted in by mistake
    write_pt(path, items=items)
    _refused(_spec(path), "item 0 (image)", "must lie in [-1, 1]")


def test_unreadable_video_and_missing_files(tmp_path: Path) -> None:
    folder = write_directory(tmp_path / "d")
    (folder / "rgb.mp4").write_bytes(b"not a video")
    _refused(_spec(folder), "rgb.mp4", "cannot be opened as a video")
    folder = write_directory(tmp_path / "e")
    (folder / "camera.npz").unlink()
    _refused(_spec(folder), "camera.npz: file does not exist")
    with open(folder / "camera.npz", "wb") as f:
        np.save(f, small_video()["w2c"])  # a single .npy under the .npz name
    _refused(_spec(folder), "camera.npz: holds a single .npy array")


def test_spec_errors(tmp_path: Path) -> None:
    folder = write_directory(tmp_path / "d")
    _refused(_spec(folder, format="mov"), "video format: 'mov'")
    _refused(_spec(folder, vipe_read_mask=True), "vipe_read_mask: applies to ViPE folders only")
    _refused(_spec(folder, start_frame=-1), "start frame: must be an integer >= 0")
    _refused(_spec(folder, num_frames=0), "num_frames: must be a positive integer")


def _fixture_videos() -> list[tuple[Path, Path]]:
    """(case JSON, its mp4) for every shipped loader fixture whose source frames are recorded."""
    from tests.parity.fixture_case import fixture_root

    pairs = []
    for kind in ("dynamic_inputs", "vipe_inputs"):
        for case in sorted((fixture_root() / kind).glob("*.json")):
            folder = case.with_suffix(".input" if kind == "dynamic_inputs" else ".vipe")
            mp4s = sorted(folder.glob("rgb.mp4")) + sorted(folder.glob("rgb/*.mp4"))
            if mp4s:
                pairs.append((case, mp4s[0]))
    return pairs


@pytest.mark.parametrize("case, mp4", _fixture_videos(), ids=lambda p: p.stem)
def test_decoded_frames_are_the_fixture_frames_exactly(case: Path, mp4: Path) -> None:
    """imageio's ffmpeg plugin decodes RGB (not OpenCV's BGR) to exactly the encoded uint8 frames."""
    from safetensors.torch import load_file

    from gen3c_dist.conditioning.video_io import read_mp4_frames

    want = load_file(str(case.with_suffix(".safetensors")))["source_frames_u8"].to(torch.uint8).numpy()
    assert np.array_equal(read_mp4_frames(str(mp4)), want)
