"""Reading the input image for GEN3C's condition latent (spec section 5.3, KINDS_conditioning.md step (a)).

The official path reads the file with ``imageio.get_reader(bytes, <extension>)`` (the legacy Pillow plugin),
keeps frame 0, and alpha-blends RGBA onto white in numpy float64 with a truncating uint8 cast. This module does
exactly that and validates the result; every problem is one :class:`ConditionImageError` (a ``ValueError``)
naming the file.

Decisions where the official code has no working behaviour (KINDS_conditioning.md, "Inputs the official path
does not support"):
* grayscale (imageio gives a 2-D array; the official code crashes): the gray value is replicated to R, G, B,
  which is exactly how an RGB file with equal channels would be read;
* grayscale + alpha (2 channels; official fails in the encoder): gray is replicated to RGB, then the alpha is
  blended onto white with the same float64 formula as RGBA;
* 16-bit PNG (imageio gives uint16; the official ``/128 - 1`` would yield values up to ~511): **rejected**, with a
  message asking for an 8-bit file. Silently requantising would hide a precision choice the user should make;
* extensions are matched case-insensitively (the official code treats ``.PNG`` as a video and fails);
* images smaller than 2x2 pixels are rejected: a single pixel carries no scene for the cache or the model.
"""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import imageio.v2 as imageio
import numpy as np

IMAGE_FORMATS = {".png": "png", ".jpg": "jpg", ".jpeg": "jpeg"}
MIN_IMAGE_SIDE = 2


class ConditionImageError(ValueError):
    """The condition image cannot be used; the message names the file and the problem."""


def blend_onto_white(rgba_HW4: np.ndarray) -> np.ndarray:
    """uint8 RGBA -> uint8 RGB over a white background, bit-exact with the official float64 formula.

    ``alpha = A / 255.0``; ``(RGB * alpha + 255 * (1 - alpha)).astype(uint8)``: float64, in this order, truncated
    (not rounded). The order and the truncation are kept on purpose: a few values land just below an integer,
    and the fixtures check them exactly (KINDS_conditioning.md, "Truncating float64 alpha blend").
    """
    rgb_HW3 = rgba_HW4[..., :3]
    alpha_HW1 = (rgba_HW4[..., 3] / 255.0)[..., None]
    white_HW3 = np.ones_like(rgb_HW3) * 255
    return (rgb_HW3 * alpha_HW1 + white_HW3 * (1 - alpha_HW1)).astype(np.uint8)


def _read_first_frame(path: Path, fmt: str) -> np.ndarray:
    try:
        data = path.read_bytes()
    except OSError as err:
        raise ConditionImageError(f"condition image {path}: cannot be read ({err.strerror or err})") from err
    if not data:
        raise ConditionImageError(f"condition image {path}: the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # imageio's legacy-plugin deprecation notices
            reader = imageio.get_reader(io.BytesIO(data), fmt)
            frame = np.asarray(reader.get_data(0))
            reader.close()
    except Exception as err:  # imageio/Pillow raise many types for damaged files
        raise ConditionImageError(f"condition image {path}: not a readable {fmt.upper()} file ({err})") from err
    return frame


def _to_rgb(frame: np.ndarray, path: Path) -> np.ndarray:
    """Validate dtype, size and channels, then return uint8 (H, W, 3)."""
    if frame.dtype != np.uint8:
        kind = "16-bit" if frame.dtype == np.uint16 else f"{frame.dtype}-sample"
        raise ConditionImageError(f"condition image {path}: {kind} images are not supported; "
                                  "save it as an 8-bit RGB or RGBA PNG/JPEG")
    if frame.ndim == 2:
        frame = frame[..., None]
    if frame.ndim != 3 or frame.shape[2] not in (1, 2, 3, 4):
        raise ConditionImageError(f"condition image {path}: unsupported pixel layout {frame.shape}")
    height, width, channels = frame.shape
    if height < MIN_IMAGE_SIDE or width < MIN_IMAGE_SIDE:
        raise ConditionImageError(f"condition image {path}: {height}x{width} pixels is too small "
                                  f"(at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE})")
    if channels in (1, 2):  # grayscale (+ alpha): replicate gray to RGB, keep the alpha for the blend
        frame = np.concatenate([np.repeat(frame[..., :1], 3, axis=2), frame[..., 1:]], axis=2)
    if frame.shape[2] == 4:
        frame = blend_onto_white(frame)
    return np.ascontiguousarray(frame)


def read_condition_image(path: str | Path) -> np.ndarray:
    """Read a PNG/JPEG for the condition latent: uint8 (H0, W0, 3), RGBA already blended onto white."""
    path = Path(path)
    fmt = IMAGE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ConditionImageError(f"condition image {path}: unsupported extension {path.suffix!r}; "
                                  f"use one of {sorted(IMAGE_FORMATS)}")
    if not path.is_file():
        raise ConditionImageError(f"condition image {path}: no such file")
    return _to_rgb(_read_first_frame(path, fmt), path)
