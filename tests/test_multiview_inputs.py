"""Multi-view input loaders: the official npz, a trajectory file as the target path, a key-frame folder; the
per-chunk camera slicing; and one clear ValueError for each kind of bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from gen3c_dist.conditioning.multiview_inputs import (
    KEY_FRAME_KEYS,
    load_key_frame_folder,
    load_multiview,
    load_multiview_npz,
)

N, H, W = 3, 20, 28


def _rigid(angle: float, shift: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    w2c = np.eye(4)
    w2c[:3, :3] = [[c, 0, -s], [0, 1, 0], [s, 0, c]]
    w2c[:3, 3] = [shift, 0.02, 0.1]
    return w2c


def _arrays(num_frames: int = 121) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    K = np.array([[30.0, 0, 13.5], [0, 31.0, 9.5], [0, 0, 1]])
    return {
        "images_key_frames": (rng.integers(0, 256, (N, 3, H, W)) / 127.5 - 1).astype(np.float32),
        "depth_key_frames": (1 + rng.random((N, 1, H, W))).astype(np.float32),
        "mask_key_frames": (rng.random((N, 1, H, W)) > 0.2).astype(np.float32),
        "K_key_frames": np.stack([K + [[i, 0, 0], [0, i, 0], [0, 0, 0]] for i in range(N)]).astype(np.float32),
        "w2cs_key_frames": np.stack([_rigid(0.1 * i, -0.2 * i) for i in range(N)]).astype(np.float32),
        "w2cs_all": np.stack([_rigid(0.001 * f, -0.002 * f) for f in range(num_frames)]).astype(np.float32),
    }


def _npz(tmp_path: Path, arrays: dict[str, np.ndarray], name: str = "scene.npz") -> Path:
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def _error(fn: Any, *args: Any, **kwargs: Any) -> str:
    with pytest.raises(ValueError) as info:
        fn(*args, **kwargs)
    return str(info.value)


# ---- the official npz -------------------------------------------------------------------------------------------
def test_npz_loads_key_frames_and_defaults_every_target_k_to_the_last_key_k(tmp_path: Path) -> None:
    arrays = _arrays()
    inputs = load_multiview_npz(_npz(tmp_path, arrays))
    kf = inputs.key_frames
    for name, tensor in zip(KEY_FRAME_KEYS, (kf.images_N3HW, kf.depth_N1HW, kf.mask_N1HW, kf.K_N33, kf.w2c_N44)):
        assert tensor.dtype == torch.float32 and np.array_equal(tensor.numpy(), arrays[name]), name
    assert torch.equal(kf.first_frame_13HW(), kf.images_N3HW[:1])
    assert inputs.path.num_frames == 121 and inputs.path.num_chunks == 1
    assert np.array_equal(inputs.path.w2cs_F44.numpy(), arrays["w2cs_all"])
    assert np.array_equal(inputs.path.Ks_F33.numpy(), np.repeat(arrays["K_key_frames"][-1:], 121, axis=0))


def test_npz_ks_all_is_used_and_num_frames_cuts_the_path(tmp_path: Path) -> None:
    arrays = _arrays(361)
    arrays["Ks_all"] = np.repeat(arrays["K_key_frames"][:1], 361, axis=0) * [[1.01], [1.0], [1.0]]
    arrays["Ks_all"][:, 2] = [0, 0, 1]
    inputs = load_multiview_npz(_npz(tmp_path, arrays), num_frames=241)
    assert inputs.path.num_frames == 241 and inputs.path.num_chunks == 2
    assert np.array_equal(inputs.path.Ks_F33.numpy(), arrays["Ks_all"][:241].astype(np.float32))
    w2cs, Ks = inputs.path.chunk(1)
    # Chunk k renders targets [120k, 120k + 121): chunk 1 starts on chunk 0's last frame (no cache update).
    assert w2cs.shape == (1, 121, 4, 4) and Ks.shape == (1, 121, 3, 3)
    assert np.array_equal(w2cs[0].numpy(), arrays["w2cs_all"][120:241])
    assert list(inputs.path.chunk_frames(0)) == list(range(121))
    assert "the path has 2 chunks" in _error(inputs.path.chunk, 2)


def test_key_frames_build_their_cache(tmp_path: Path) -> None:
    kf = load_multiview_npz(_npz(tmp_path, _arrays())).key_frames
    cache = kf.cache(filter_points_threshold=0.05, foreground_masking=True)
    assert cache.num_key_frames == N and cache.output_buffers == 2 and cache.boundary.shape == (1, N, H, W)
    assert torch.equal(cache.masks[0, :, 0] & kf.mask_N1HW[:, 0].bool(), cache.masks[0, :, 0])


@pytest.mark.parametrize("change, expected", [
    (lambda a: a.update(images_key_frames=a["images_key_frames"][:0], depth_key_frames=a["depth_key_frames"][:0],
                        mask_key_frames=a["mask_key_frames"][:0], K_key_frames=a["K_key_frames"][:0],
                        w2cs_key_frames=a["w2cs_key_frames"][:0]), "holds no key frames (N = 0)"),
    (lambda a: a.update(K_key_frames=a["K_key_frames"][:2]), "key-frame arrays have different lengths"),
    (lambda a: a.update(depth_key_frames=a["depth_key_frames"][..., :-1]), "'depth_key_frames': frames are [20, 27]"),
    (lambda a: a.update(mask_key_frames=a["mask_key_frames"][:, :, :-2]), "'mask_key_frames': frames are [18, 28]"),
    (lambda a: a["w2cs_key_frames"].__setitem__(1, np.zeros((4, 4))), "bottom row"),
    (lambda a: a["w2cs_key_frames"][1].__setitem__((slice(0, 3), slice(0, 3)), 0), "frame 1 is not invertible"),
    (lambda a: a["w2cs_key_frames"][2].__setitem__((slice(0, 3), slice(0, 3)), 2 * np.eye(3)),
     "frame 2 is not a rigid pose"),
    (lambda a: a["K_key_frames"][0].__setitem__((0, 0), -5), "focal lengths fx = -5"),
    (lambda a: a.update(w2cs_all=a["w2cs_all"][:100]), "100 target frames is not 120K+1"),
    (lambda a: a.update(Ks_all=a["K_key_frames"][:1].repeat(120, axis=0)), "'Ks_all': expected shape [121, 3, 3]"),
    (lambda a: a["w2cs_all"][7].__setitem__((0, 0), 3), "'w2cs_all': w2c of frame 7 is not a rigid pose"),
    (lambda a: a.pop("depth_key_frames"), "missing keys ['depth_key_frames']"),
    (lambda a: a.update(Ks_al=a["K_key_frames"]), "unknown keys ['Ks_al']"),
    (lambda a: a.update(images_key_frames=(a["images_key_frames"] + 1) * 127.5), "values must lie in [-1, 1]"),
    (lambda a: a["depth_key_frames"].__setitem__((2, 0, 3, 4), -1), "first: key frame 2, row 3, column 4"),
    (lambda a: a["depth_key_frames"].__setitem__((0, 0, 0, 0), np.nan), "NaN, infinite or negative"),
    (lambda a: a["mask_key_frames"].__setitem__((0, 0, 0, 0), 0.5), "values must be 0 or 1, got also [0.5]"),
    (lambda a: a.update(images_key_frames=a["images_key_frames"][:, :1]), "expected shape [N, 3, H, W]"),
])
def test_bad_npz_raises_one_clear_error(tmp_path: Path, change: Any, expected: str) -> None:
    arrays = _arrays()
    change(arrays)
    path = _npz(tmp_path, arrays)
    message = _error(load_multiview_npz, path)
    assert expected in message and str(path) in message, message


def test_unreadable_npz_files_are_refused(tmp_path: Path) -> None:
    assert "does not exist" in _error(load_multiview_npz, tmp_path / "nope.npz")
    objects = tmp_path / "objects.npz"
    np.savez(objects, **{**_arrays(), "images_key_frames": np.array([{"a": 1}], dtype=object)})
    assert "without pickle" in _error(load_multiview_npz, objects)
    single = tmp_path / "single.npz"
    with open(single, "wb") as handle:
        np.save(handle, np.zeros(3))
    assert "single array" in _error(load_multiview_npz, single)
    assert "give the number of frames" in _error(load_multiview_npz, objects, trajectory_file="x.json")
    assert "241 frames are requested but it has 121" in _error(load_multiview_npz, _npz(tmp_path, _arrays()),
                                                                num_frames=241)


# ---- trajectory file as the target path -------------------------------------------------------------------------
def test_trajectory_file_replaces_w2cs_all(tmp_path: Path) -> None:
    arrays = _arrays()
    del arrays["w2cs_all"]  # not needed with a trajectory file
    K = np.array([[25.0, 0, 13.0], [0, 25.0, 9.0], [0, 0, 1]])
    w2cs = np.stack([_rigid(-0.001 * f, 0.001 * f) for f in range(241)])
    trajectory = tmp_path / "path.json"
    trajectory.write_text(json.dumps({"w2c": w2cs.tolist(), "intrinsics": K.tolist()}))
    inputs = load_multiview(_npz(tmp_path, arrays), trajectory_file=trajectory, num_frames=241)
    assert inputs.path.num_chunks == 2 and np.allclose(inputs.path.w2cs_F44.numpy(), w2cs, atol=1e-7)
    assert np.array_equal(inputs.path.Ks_F33.numpy(), np.repeat(K[None], 241, 0).astype(np.float32))
    assert "has 241 poses, but 121 frames are requested" in _error(
        load_multiview, _npz(tmp_path, arrays), trajectory_file=trajectory, num_frames=121)
    assert "is not 120K+1" in _error(load_multiview, _npz(tmp_path, arrays), trajectory_file=trajectory,
                                     num_frames=240)
    assert "missing keys ['w2cs_all']" in _error(load_multiview, _npz(tmp_path, arrays))


# ---- key-frame folder ---------------------------------------------------------------------------------------------
def _folder(tmp_path: Path, arrays: dict[str, np.ndarray]) -> Path:
    """A folder holding ``arrays``' key frames: frame 0 w2c + K matrix + PNG mask, frame 1 c2w + K dict + .npz
    depth, frame 2 .npy mask and no optional keys beyond it."""
    folder = tmp_path / "scene"
    (folder / "images").mkdir(parents=True)
    frames = []
    for i in range(N):
        rgb = np.round((arrays["images_key_frames"][i].transpose(1, 2, 0) + 1) * 127.5).astype(np.uint8)
        Image.fromarray(rgb).save(folder / f"images/{i}.png")
        frame = {"image": f"images/{i}.png", "depth": f"d{i}.npy"}
        depth, mask = arrays["depth_key_frames"][i, 0], arrays["mask_key_frames"][i, 0]
        K, w2c = arrays["K_key_frames"][i].astype(np.float64), arrays["w2cs_key_frames"][i].astype(np.float64)
        if i == 1:
            np.savez(folder / "d1.npz", depth=depth)
            frame.update(depth="d1.npz", c2w=np.linalg.inv(w2c).tolist(),
                         K={"fx": K[0, 0], "fy": K[1, 1], "cx": K[0, 2], "cy": K[1, 2]})
        else:
            np.save(folder / f"d{i}.npy", depth)
            frame.update(w2c=w2c.tolist(), K=K.tolist())
        if i == 0:
            Image.fromarray((mask * 255).astype(np.uint8)).save(folder / "m0.png")
            frame["mask"] = "m0.png"
        else:
            np.save(folder / f"m{i}.npy", mask)
            frame["mask"] = f"m{i}.npy"
        frames.append(frame)
    (folder / "cameras.json").write_text(json.dumps({"frames": frames}))
    return folder


def test_folder_loads_the_same_key_frames_as_the_npz(tmp_path: Path) -> None:
    arrays = _arrays()
    kf = load_key_frame_folder(_folder(tmp_path, arrays))
    for name, tensor in zip(KEY_FRAME_KEYS[:4], (kf.images_N3HW, kf.depth_N1HW, kf.mask_N1HW, kf.K_N33)):
        assert np.array_equal(tensor.numpy(), arrays[name]), name
    # c2w inverted in float64 then rounded: equal to the float32 w2c up to rounding.
    assert np.allclose(kf.w2c_N44.numpy(), arrays["w2cs_key_frames"], atol=1e-6)


def test_folder_needs_a_trajectory_file(tmp_path: Path) -> None:
    folder = _folder(tmp_path, _arrays())
    assert "give the target path as a trajectory file" in _error(load_multiview, folder)
    assert "expected an .npz" in _error(load_multiview, folder / "cameras.json")


def _edit_cameras(folder: Path, edit: Any) -> None:
    data = json.loads((folder / "cameras.json").read_text())
    edit(data)
    (folder / "cameras.json").write_text(json.dumps(data))


@pytest.mark.parametrize("edit, expected", [
    (lambda d: d["frames"].clear(), "'frames' is empty (N = 0)"),
    (lambda d: d.update(extra=1), "exactly one key 'frames'"),
    (lambda d: d["frames"][1].update(w2c=np.eye(4).tolist()), "exactly one of 'w2c' / 'c2w'"),
    (lambda d: d["frames"][0].update(rgb="x.png"), "unknown keys ['rgb']"),
    (lambda d: d["frames"][2].update(image="missing.png"), "does not exist"),
    (lambda d: d["frames"][2].update(K=[[0.5, 0, 0.5], [0, 0.5, 0.5], [0, 0, 1]]), "look normalised"),
    (lambda d: d["frames"][1].update(c2w=np.zeros((4, 4)).tolist()), "'c2w': not invertible"),
    (lambda d: d["frames"][0].update(w2c=(2 * np.eye(4)).tolist()), "bottom row"),
    (lambda d: d["frames"][0].update(w2c=np.diag([1.0, 1.0, 1.5, 1.0]).tolist()), "frame 0 is not a rigid pose"),
    (lambda d: d["frames"][2].update(w2c=[[1, 0], [0, 1]]), "must be a 4x4 list of numbers"),
    (lambda d: d["frames"][2].update(depth="images/0.png"), "use one of ['.npy', '.npz']"),
])
def test_bad_camera_json_raises_one_clear_error(tmp_path: Path, edit: Any, expected: str) -> None:
    folder = _folder(tmp_path, _arrays())
    _edit_cameras(folder, edit)
    message = _error(load_key_frame_folder, folder)
    assert expected in message, message


def test_bad_folder_files_raise_one_clear_error(tmp_path: Path) -> None:
    arrays = _arrays()
    folder = _folder(tmp_path, arrays)
    Image.fromarray(np.zeros((H + 2, W, 3), np.uint8)).save(folder / "images/2.png")
    assert "all key frames must have one size" in _error(load_key_frame_folder, folder)
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(folder / "images/2.png")
    np.save(folder / "d2.npy", np.ones((H, W - 1)))
    assert f"depth file {folder / 'd2.npy'}: depth is [20, 27]" in _error(load_key_frame_folder, folder)
    bad = np.ones((H, W))
    bad[4, 6] = np.inf
    np.save(folder / "d2.npy", bad)
    assert "first at row 4, column 6" in _error(load_key_frame_folder, folder)
    np.save(folder / "d2.npy", np.ones((H, W)))
    np.save(folder / "m2.npy", np.full((H, W), 0.3))
    assert f"mask file {folder / 'm2.npy'}: values must be 0 or 1" in _error(load_key_frame_folder, folder)
    np.save(folder / "m2.npy", np.ones((H, W)))
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(folder / "m0.png")
    assert "8-bit single-channel PNG" in _error(load_key_frame_folder, folder)
    Image.fromarray(np.full((H, W), 255, np.uint8)).save(folder / "m0.png")
    (folder / "images/1.png").write_bytes(b"not a png")
    assert f"input image {folder / 'images/1.png'}: cannot be decoded" in _error(load_key_frame_folder, folder)
    (folder / "cameras.json").write_text("{")
    assert "not valid JSON" in _error(load_key_frame_folder, folder)
    (folder / "cameras.json").unlink()
    assert "no cameras.json" in _error(load_key_frame_folder, folder)


def test_opengl_c2w_conversion_of_the_docs_gives_the_w2c() -> None:
    """The README's worked example: w2c = inv(c2w_gl @ diag(1, -1, -1, 1))."""
    w2c = _rigid(0.3, -0.4)
    flip = np.diag([1.0, -1.0, -1.0, 1.0])
    c2w_gl = np.linalg.inv(w2c) @ flip  # what Blender / NeRF would store for this camera
    assert np.allclose(np.linalg.inv(c2w_gl @ flip), w2c)
    # In OpenGL axes the camera looks down -z and y is up: a point in front of it has negative z and a point
    # below the optical axis (y down in ours) has negative y there.
    point_world = np.linalg.inv(w2c) @ [0.0, 0.2, 2.0, 1.0]  # 2 ahead, 0.2 below, in our camera frame
    assert np.allclose(np.linalg.inv(c2w_gl) @ point_world, [0.0, -0.2, -2.0, 1.0])
