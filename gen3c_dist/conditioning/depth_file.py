"""User-supplied depth for the input image, instead of MoGe.

Accepted files (depth in the same metric as the camera trajectory, intrinsics in pixels):

* ``.npz`` with ``depth`` [H, W] and ``intrinsics`` [3, 3];
* ``.npy`` holding the depth [H, W]; intrinsics from the ``intrinsics`` argument or a sidecar file;
* ``.png`` 16-bit single channel, ``depth = value * png_scale``; intrinsics as for ``.npy``.

Intrinsics, when not inside the ``.npz``, are a [3, 3] array or a file: ``.npy`` [3, 3], ``.txt`` (3 rows of 3
numbers) or ``.json`` (a 3x3 list, or ``{"fx", "fy", "cx", "cy"}``). Without the argument, a sidecar next to the
depth is used: ``<depth path without suffix>.intrinsics.{npy,json,txt}``.

Decisions:

* The depth and its intrinsics live in the **input image's** pixel grid: the depth must have exactly the image's
  H x W. It is then resized to the target like MoGe's depth (bilinear, align_corners=False; K rescaled per axis),
  and the cache image is built exactly as on the MoGe path, so only the depth source changes.
* Non-positive depth is rejected: zero means "no point" in the cache (spec section 7.2), so holes must be filled
  by the user (MoGe's path writes 1000 for sky/invalid pixels, spec section 7.1). NaN and inf are rejected too.
* Intrinsics must be finite, with fx, fy > 0, no skew and a last row of [0, 0, 1]. Values with cx, cy <= 1 are
  rejected as "normalised" (MoGe's convention), since a real principal point is never within a pixel of the corner.
* The final depth is clamped to [0, 1e4] like MoGe's (a no-op for sane files); the mask is all True.
* Every problem raises one ``ValueError`` that names the file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F

from gen3c_dist.conditioning.depth import MAX_DEPTH, DepthEstimate, prepare_cache_image
from gen3c_dist.conditioning.input_image import import_cv2, read_rgb_image
from gen3c_dist.errors import InputError

IntrinsicsSource = Union[str, os.PathLike, np.ndarray]
SIDECAR_SUFFIXES = (".intrinsics.npy", ".intrinsics.json", ".intrinsics.txt")
_INTRINSICS_HELP = (
    "give intrinsics as an .npz key 'intrinsics', a file named by `input.intrinsics` (.npy [3, 3], .json or "
    ".txt), or a sidecar <depth name>.intrinsics.{npy,json,txt}"
)


def _load_numpy(path: str, what: str) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise InputError(f"{what} {path}: cannot be read as a numpy file without pickle ({err})") from err
    if not isinstance(array, np.ndarray):  # an .npz archive saved under an .npy name
        array.close()
        raise InputError(f"{what} {path}: holds an .npz archive, not a single .npy array")
    return array


def _intrinsics_from_json(path: str) -> np.ndarray:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"intrinsics file {path}: not valid JSON ({err})") from err
    if isinstance(data, dict):
        missing = [key for key in ("fx", "fy", "cx", "cy") if key not in data]
        if missing:
            raise InputError(f"intrinsics file {path}: JSON object lacks {missing}; expected fx, fy, cx, cy")
        return np.array([[data["fx"], 0.0, data["cx"]], [0.0, data["fy"], data["cy"]], [0.0, 0.0, 1.0]])
    return np.asarray(data, dtype=np.float64)


def read_intrinsics(source: IntrinsicsSource) -> tuple[np.ndarray, str]:
    """A raw intrinsics array from an array or a file, and a label naming its origin for messages."""
    if isinstance(source, np.ndarray):
        return source, "intrinsics argument"
    path = os.fspath(source)
    if not os.path.isfile(path):
        raise InputError(f"intrinsics file {path}: file does not exist")
    suffix = Path(path).suffix.lower()
    if suffix == ".npy":
        return _load_numpy(path, "intrinsics file"), f"intrinsics file {path}"
    if suffix == ".json":
        return _intrinsics_from_json(path), f"intrinsics file {path}"
    if suffix == ".txt":
        try:
            return np.loadtxt(path, dtype=np.float64, ndmin=2), f"intrinsics file {path}"
        except ValueError as err:
            raise InputError(f"intrinsics file {path}: cannot be parsed as numbers ({err})") from err
    raise InputError(f"intrinsics file {path}: unsupported suffix {suffix!r}; use .npy, .json or .txt")


def find_sidecar_intrinsics(depth_path: str) -> Optional[str]:
    """``<depth path without suffix>.intrinsics.{npy,json,txt}`` if one exists."""
    stem = os.path.splitext(depth_path)[0]
    for suffix in SIDECAR_SUFFIXES:
        if os.path.isfile(stem + suffix):
            return stem + suffix
    return None


def validate_intrinsics(k_raw: np.ndarray, label: str) -> np.ndarray:
    """Check pixel intrinsics; returns them as float64 [3, 3]. ``label`` names the file in the error."""
    k_33 = np.asarray(k_raw)
    if k_33.shape != (3, 3) or not np.issubdtype(k_33.dtype, np.number) or np.iscomplexobj(k_33):
        raise InputError(f"{label}: intrinsics must be a real [3, 3] matrix, got shape {k_33.shape}, {k_33.dtype}")
    k_33 = k_33.astype(np.float64)
    if not np.all(np.isfinite(k_33)):
        raise InputError(f"{label}: intrinsics contain NaN or inf: {k_33.tolist()}")
    if not np.allclose(k_33[2], [0.0, 0.0, 1.0], atol=1e-6) or k_33[0, 1] != 0 or k_33[1, 0] != 0:
        raise InputError(f"{label}: intrinsics must be [[fx,0,cx],[0,fy,cy],[0,0,1]] (no skew), got {k_33.tolist()}")
    if k_33[0, 0] <= 0 or k_33[1, 1] <= 0:
        raise InputError(f"{label}: focal lengths must be positive, got fx={k_33[0, 0]}, fy={k_33[1, 1]}")
    if abs(k_33[0, 2]) <= 1 and abs(k_33[1, 2]) <= 1:
        raise InputError(
            f"{label}: intrinsics look normalised (cx={k_33[0, 2]}, cy={k_33[1, 2]}); give them in pixels "
            "(multiply fx, cx by the width and fy, cy by the height)"
        )
    return k_33


def validate_depth(depth_raw: np.ndarray, path: str) -> np.ndarray:
    """Check a raw depth array; returns it as float64 [H, W]."""
    if not np.issubdtype(depth_raw.dtype, np.number) or np.iscomplexobj(depth_raw):
        raise InputError(f"depth file {path}: depth must be real numbers, got dtype {depth_raw.dtype}")
    depth_hw = np.squeeze(depth_raw)
    if depth_hw.ndim != 2:
        raise InputError(f"depth file {path}: depth must be 2-D [H, W], got shape {tuple(depth_raw.shape)}")
    if depth_hw.size == 0:
        raise InputError(f"depth file {path}: depth is empty, shape {tuple(depth_raw.shape)}")
    depth_hw = depth_hw.astype(np.float64)
    for bad, name in ((np.isnan(depth_hw), "NaN"), (np.isinf(depth_hw), "infinite")):
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise InputError(f"depth file {path}: {int(bad.sum())} {name} values (first at row {row}, column {col})")
    non_positive = depth_hw <= 0
    if non_positive.any():
        row, col = np.argwhere(non_positive)[0]
        raise InputError(
            f"depth file {path}: {int(non_positive.sum())} pixels have depth <= 0 (first at row {row}, column "
            f"{col}); zero means 'no point' in the 3D cache, so fill holes first (MoGe uses 1000 for sky)"
        )
    return depth_hw


def _read_png_depth(path: str, png_scale: Optional[float]) -> np.ndarray:
    if png_scale is None or not np.isfinite(png_scale) or png_scale <= 0:
        raise InputError(
            f"depth file {path}: a 16-bit PNG needs a positive scale (depth = value * scale, e.g. 0.001 for "
            f"millimetres); got depth_png_scale={png_scale}"
        )
    raw = import_cv2().imread(path, -1)  # -1 = IMREAD_UNCHANGED: keep 16 bits and the channel count
    if raw is None:
        raise InputError(f"depth file {path}: cannot be decoded as a PNG")
    if raw.dtype != np.uint16:
        raise InputError(f"depth file {path}: PNG depth must be 16-bit, got {raw.dtype} (too few depth levels)")
    if raw.ndim != 2:
        raise InputError(f"depth file {path}: PNG depth must have one channel, got shape {tuple(raw.shape)}")
    return raw.astype(np.float64) * png_scale


def _read_npz(path: str) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """(depth, intrinsics or None) from an .npz; object arrays fail here because pickle is off."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "depth" not in archive.files:
                raise InputError(f"depth file {path}: .npz has no 'depth' key (keys: {archive.files})")
            embedded = archive["intrinsics"] if "intrinsics" in archive.files else None
            return archive["depth"], embedded
    except (OSError, EOFError, ValueError) as err:
        if str(err).startswith(f"depth file {path}"):
            raise
        raise InputError(f"depth file {path}: cannot be read as an .npz without pickle ({err})") from err


def _resolve_intrinsics(path: str, embedded: Optional[np.ndarray],
                        intrinsics: Optional[IntrinsicsSource]) -> np.ndarray:
    if embedded is not None and intrinsics is not None:
        raise InputError(f"depth file {path}: intrinsics given twice (inside the .npz and as an argument)")
    if embedded is not None:
        return validate_intrinsics(embedded, f"depth file {path}")
    if intrinsics is None:
        intrinsics = find_sidecar_intrinsics(path)
        if intrinsics is None:
            raise InputError(f"depth file {path}: no intrinsics found; {_INTRINSICS_HELP}")
    k_raw, label = read_intrinsics(intrinsics)
    return validate_intrinsics(k_raw, label)


def load_depth_file(path: Union[str, os.PathLike], *, intrinsics: Optional[IntrinsicsSource] = None,
                    png_scale: Optional[float] = None) -> tuple[np.ndarray, np.ndarray]:
    """Read and validate a depth file. Returns (depth [H, W] float64 > 0, pixel intrinsics [3, 3] float64)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"depth file {path}: file does not exist")
    suffix = Path(path).suffix.lower()
    if png_scale is not None and suffix != ".png":
        raise InputError(f"depth file {path}: depth_png_scale applies to 16-bit PNG depth only")
    embedded = None
    if suffix == ".npz":
        raw, embedded = _read_npz(path)
    elif suffix == ".npy":
        raw = _load_numpy(path, "depth file")
    elif suffix == ".png":
        raw = _read_png_depth(path, png_scale)
    else:
        raise InputError(f"depth file {path}: unsupported suffix {suffix!r}; use .npz, .npy or 16-bit .png")
    depth_hw = validate_depth(raw, path)
    return depth_hw, _resolve_intrinsics(path, embedded, intrinsics)


def check_depth_fits_image(depth_path: Union[str, os.PathLike], depth_hw: tuple[int, ...],
                           image_path: Union[str, os.PathLike], image_hw: tuple[int, ...]) -> None:
    """The depth must have the input image's pixel grid (see the module docstring)."""
    if tuple(depth_hw) != tuple(image_hw):
        raise InputError(
            f"depth file {os.fspath(depth_path)}: depth is {depth_hw[1]}x{depth_hw[0]} but the input image "
            f"{os.fspath(image_path)} is {image_hw[1]}x{image_hw[0]}; they must be pixel-aligned"
        )


def depth_from_file(image_path: Union[str, os.PathLike], depth_path: Union[str, os.PathLike], target_h: int,
                    target_w: int, *, intrinsics: Optional[IntrinsicsSource] = None,
                    png_scale: Optional[float] = None, device: Union[str, torch.device] = "cpu") -> DepthEstimate:
    """The cache inputs from the input image and a user depth file, at the target size (replaces MoGe)."""
    rgb_hw3 = read_rgb_image(image_path)
    depth_hw, k_33 = load_depth_file(depth_path, intrinsics=intrinsics, png_scale=png_scale)
    check_depth_fits_image(depth_path, depth_hw.shape, image_path, rgb_hw3.shape[:2])
    src_h, src_w = depth_hw.shape
    _, image_13hw = prepare_cache_image(rgb_hw3, target_h, target_w, device)
    depth_11hw = torch.tensor(depth_hw, dtype=torch.float32, device=device)[None, None]
    depth_11hw = F.interpolate(depth_11hw, size=(target_h, target_w), mode="bilinear", align_corners=False)
    depth_11hw = torch.clamp(depth_11hw, min=0, max=MAX_DEPTH)
    k_33 = k_33.copy()
    k_33[0, [0, 2]] *= target_w / src_w  # fx, cx: same convention as the MoGe path (no half-pixel shift)
    k_33[1, [1, 2]] *= target_h / src_h  # fy, cy
    return DepthEstimate(
        image=image_13hw,
        depth=depth_11hw,
        mask=torch.ones_like(depth_11hw, dtype=torch.bool),
        w2c=torch.eye(4, dtype=torch.float32, device=device)[None],
        intrinsics=torch.tensor(k_33, dtype=torch.float32, device=device)[None],
    )
