"""Multi-view key frames from a plain folder: images, depth files and one ``cameras.json``.

For users whose poses and depth come from COLMAP, VGGT, ViPE or similar tools and who have no npz in the official
layout. This module reads and checks the files one by one (each error names the file, or ``cameras.json`` and
the frame); :func:`gen3c_dist.conditioning.multiview_inputs.load_multiview` then validates the stacked arrays
like an npz's. The camera convention is the one in ``multiview_inputs`` (world-to-camera, x right, y down,
z forward, K in pixels, integer pixel centres).

Layout (paths inside ``cameras.json`` are relative to the folder)::

    my_scene/
      cameras.json
      images/000.png  images/001.png ...        8-bit RGB .png / .jpg, all of one size
      depth/000.npy   depth/001.npz ...         z-depth [H, W] (.npy, or .npz with key "depth"), >= 0
      masks/000.png ...                         optional: 8-bit single channel, > 0 = valid (or .npy of 0/1)

``cameras.json``::

    {"frames": [
      {"image": "images/000.png", "depth": "depth/000.npy", "mask": "masks/000.png",
       "w2c": [[r00, r01, r02, tx], [r10, r11, r12, ty], [r20, r21, r22, tz], [0, 0, 0, 1]],
       "K": [[fx, 0, cx], [0, fy, cy], [0, 0, 1]]},
      {"image": "images/001.png", "depth": "depth/001.npz",
       "c2w": [[...], [...], [...], [0, 0, 0, 1]],
       "K": {"fx": 200.0, "fy": 200.0, "cx": 95.5, "cy": 63.5}}
    ]}

Each frame has exactly one of ``w2c`` (world-to-camera) or ``c2w`` (its inverse, camera-to-world, same OpenCV
axes); ``K`` is a 3x3 list or ``{fx, fy, cx, cy}``, in pixels of that image. Frame order is key-frame order:
frame 0 conditions the first chunk. Without ``mask`` every pixel with depth > 0 is used. Images are mapped to
[-1, 1] as ``u8 / 127.5 - 1`` and are not resized: they must already have the model's resolution.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Union

import numpy as np

from gen3c_dist.conditioning.depth_file import validate_intrinsics
from gen3c_dist.conditioning.input_image import import_cv2, read_rgb_image

CAMERAS_FILE = "cameras.json"
FRAME_KEYS = ("image", "depth", "mask", "w2c", "c2w", "K")
PathLike = Union[str, os.PathLike]


def _read_cameras(folder: Path) -> list[dict[str, Any]]:
    path = folder / CAMERAS_FILE
    if not path.is_file():
        raise ValueError(f"key-frame folder {folder}: no {CAMERAS_FILE} (layout: gen3c_dist/conditioning/"
                         "multiview_folder.py)")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict) or set(data) != {"frames"} or not isinstance(data["frames"], list):
        raise ValueError(f"{path}: expected an object with exactly one key 'frames' holding a list of frames")
    if not data["frames"]:
        raise ValueError(f"{path}: 'frames' is empty (N = 0); give at least one key frame")
    for index, frame in enumerate(data["frames"]):
        where = f"{path} frame {index}"
        if not isinstance(frame, dict):
            raise ValueError(f"{where}: expected an object, got {type(frame).__name__}")
        unknown = sorted(set(frame) - set(FRAME_KEYS))
        if unknown:
            raise ValueError(f"{where}: unknown keys {unknown}; allowed are {list(FRAME_KEYS)}")
        missing = [key for key in ("image", "depth", "K") if key not in frame]
        if missing or ("w2c" in frame) == ("c2w" in frame):
            raise ValueError(f"{where}: needs 'image', 'depth', 'K' and exactly one of 'w2c' / 'c2w' "
                             f"(missing {missing or []}, has {sorted(frame)})")
    return data["frames"]


def _numbers(value: Any, shape: tuple[int, ...], where: str) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: must be a {shape[0]}x{shape[1]} list of numbers") from None
    if array.shape != shape:
        raise ValueError(f"{where}: must be a {shape[0]}x{shape[1]} list of numbers, got shape {list(array.shape)}")
    return array


def _intrinsics(value: Any, where: str) -> np.ndarray:
    if isinstance(value, dict):
        if sorted(value) != ["cx", "cy", "fx", "fy"]:
            raise ValueError(f"{where}: an intrinsics object needs exactly fx, fy, cx, cy, got {sorted(value)}")
        fx, fy, cx, cy = (_numbers([[value[k]]], (1, 1), f"{where} {k}")[0, 0] for k in ("fx", "fy", "cx", "cy"))
        value = [[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]]
    return validate_intrinsics(_numbers(value, (3, 3), where), where)


def _w2c(frame: dict[str, Any], where: str) -> np.ndarray:
    """The frame's world-to-camera matrix; a ``c2w`` is inverted (its rigidity is checked on the result)."""
    if "w2c" in frame:
        return _numbers(frame["w2c"], (4, 4), f"{where} 'w2c'")
    c2w = _numbers(frame["c2w"], (4, 4), f"{where} 'c2w'")
    if not np.isfinite(c2w).all() or abs(np.linalg.det(c2w)) < 1e-12:
        raise ValueError(f"{where} 'c2w': not invertible (non-finite or singular matrix)")
    return np.linalg.inv(c2w)


def _read_array(path: Path, what: str, npz_key: str) -> np.ndarray:
    """One numeric array from an .npy, or from key ``npz_key`` of an .npz; pickle off."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, EOFError, ValueError) as err:
        raise ValueError(f"{what} {path}: cannot be read as .npy/.npz without pickle ({err})") from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            if npz_key not in loaded.files:
                raise ValueError(f"{what} {path}: .npz has no '{npz_key}' key (keys: {loaded.files})")
            loaded = loaded[npz_key]
    if not (np.issubdtype(loaded.dtype, np.number) or loaded.dtype == np.bool_) or np.iscomplexobj(loaded):
        raise ValueError(f"{what} {path}: must hold real numbers, got dtype {loaded.dtype}")
    return np.squeeze(loaded).astype(np.float64) if loaded.ndim > 2 else loaded.astype(np.float64)


def _file(folder: Path, name: Any, where: str, suffixes: tuple[str, ...]) -> Path:
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}: expected a file name relative to {folder}, got {name!r}")
    path = folder / name
    if not path.is_file():
        raise ValueError(f"{where}: file {path} does not exist")
    if path.suffix.lower() not in suffixes:
        raise ValueError(f"{where}: file {path} has suffix {path.suffix!r}; use one of {list(suffixes)}")
    return path


def _depth(path: Path, size_hw: tuple[int, int]) -> np.ndarray:
    depth = _read_array(path, "depth file", "depth")
    if depth.shape != size_hw:
        raise ValueError(f"depth file {path}: depth is {list(depth.shape)} (H, W) but its image is {list(size_hw)}")
    bad = ~np.isfinite(depth) | (depth < 0)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ValueError(f"depth file {path}: {int(bad.sum())} pixels are NaN, infinite or negative (first at row "
                         f"{row}, column {col}); z-depth must be >= 0 (0 = no point; negative z suggests OpenGL axes)")
    return depth


def _mask(path: Path, size_hw: tuple[int, int]) -> np.ndarray:
    if path.suffix.lower() == ".png":
        raw = import_cv2().imread(str(path), -1)  # -1 = IMREAD_UNCHANGED: keep the channel count and depth
        if raw is None or raw.dtype != np.uint8 or raw.ndim != 2:
            got = "undecodable" if raw is None else f"{raw.dtype}, shape {list(raw.shape)}"
            raise ValueError(f"mask file {path}: must be an 8-bit single-channel PNG (> 0 = valid), got {got}")
        mask = (raw > 0).astype(np.float64)
    else:
        mask = _read_array(path, "mask file", "mask")
        if not np.isin(mask, (0.0, 1.0)).all():
            raise ValueError(f"mask file {path}: values must be 0 or 1")
    if mask.shape != size_hw:
        raise ValueError(f"mask file {path}: mask is {list(mask.shape)} (H, W) but its image is {list(size_hw)}")
    return mask


def read_key_frame_folder(folder: PathLike) -> dict[str, np.ndarray]:
    """Raw arrays of a key-frame folder: images [N, 3, H, W] in [-1, 1], depth and mask [N, 1, H, W], K [N, 3, 3],
    w2c [N, 4, 4] (all float64), under the official npz key names."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"key-frame folder {folder}: not a directory")
    frames = _read_cameras(folder)
    images, depths, masks, Ks, w2cs = [], [], [], [], []
    for index, frame in enumerate(frames):
        where = f"{folder / CAMERAS_FILE} frame {index}"
        image_path = _file(folder, frame["image"], f"{where} 'image'", (".png", ".jpg", ".jpeg"))
        rgb = read_rgb_image(image_path)
        if images and rgb.shape[:2] != images[0].shape[1:]:
            raise ValueError(f"input image {image_path}: is {rgb.shape[1]}x{rgb.shape[0]} but key frame 0 is "
                             f"{images[0].shape[2]}x{images[0].shape[1]}; all key frames must have one size")
        images.append(rgb.transpose(2, 0, 1) / 127.5 - 1)
        size_hw = rgb.shape[:2]
        depths.append(_depth(_file(folder, frame["depth"], f"{where} 'depth'", (".npy", ".npz")), size_hw))
        if "mask" in frame:
            masks.append(_mask(_file(folder, frame["mask"], f"{where} 'mask'", (".png", ".npy", ".npz")), size_hw))
        else:
            masks.append(np.ones(size_hw))
        Ks.append(_intrinsics(frame["K"], f"{where} 'K'"))
        w2cs.append(_w2c(frame, where))
    return {"images_key_frames": np.stack(images), "depth_key_frames": np.stack(depths)[:, None],
            "mask_key_frames": np.stack(masks)[:, None], "K_key_frames": np.stack(Ks),
            "w2cs_key_frames": np.stack(w2cs)}
