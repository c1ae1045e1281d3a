"""Reading and validating the input image for the depth / 3D-cache path.

The official MoGe/cache path reads the image with ``cv2.imread(path)`` (``IMREAD_COLOR``) and converts BGR to RGB
(spec section 7.1). This module reproduces that reader and adds checks so that a bad file fails with one clear
``ValueError`` on every rank before any model is loaded.

Decisions (each follows the official cv2 reader unless said otherwise):

* Grayscale images are replicated to three channels, as ``IMREAD_COLOR`` does.
* RGBA images lose their alpha channel; the colour values are kept as they are, with no blending. This is an official
  quirk kept on purpose: the condition-latent path instead blends RGBA onto white (spec section 10, item 6).
* 16-bit and float images are rejected. The official cv2 reader would requantise 16-bit silently (``>> 8`` for
  PNG), but the condition-latent reader (``image_io``) refuses them, and this validator must fail on every input
  that either path refuses, before any model loads.
* Only ``.png``, ``.jpg`` and ``.jpeg`` (any case) are accepted: the formats the condition-latent reader handles.
* Images smaller than ``MIN_IMAGE_SIDE`` pixels on either side are rejected: such inputs are almost certainly a
  mistake, and the depth and the 704x1280 video would be meaningless upsamplings of a few pixels.
* EXIF orientation is applied, as ``cv2.imread`` does by default.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from PIL import Image

from gen3c_dist.errors import InputError

MIN_IMAGE_SIDE = 16  # pixels; see the module docstring
SUPPORTED_SUFFIXES = (".png", ".jpg", ".jpeg")  # the same set as the condition-latent reader

_CV2_INSTALL_HINT = "pip install -e .[depth]"


def import_cv2() -> Any:
    """Import OpenCV, or fail with the install command (cv2 is an optional dependency)."""
    try:
        import cv2  # optional extra [depth]; the error below names the install command
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError(f"reading images needs OpenCV; install it with `{_CV2_INSTALL_HINT}`") from err
    return cv2


def _check_file(path: str) -> None:
    if not os.path.exists(path):
        raise InputError(f"input image {path}: file does not exist")
    if not os.path.isfile(path):
        raise InputError(f"input image {path}: not a regular file")
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise InputError(f"input image {path}: unsupported extension {suffix!r}; use one of {SUPPORTED_SUFFIXES}")
    if os.path.getsize(path) == 0:
        raise InputError(f"input image {path}: file is empty (0 bytes)")


def _check_pixels(image: np.ndarray, path: str) -> None:
    if image.dtype != np.uint8:
        kind = "16-bit" if image.dtype == np.uint16 else f"{image.dtype}-sample"
        raise InputError(f"input image {path}: {kind} images are not supported; save it as an 8-bit PNG or JPEG")
    if image.ndim != 3 or image.shape[2] != 3:
        raise InputError(f"input image {path}: decoded to an unexpected shape {tuple(image.shape)}")
    height, width = image.shape[:2]
    if height < MIN_IMAGE_SIDE or width < MIN_IMAGE_SIDE:
        raise InputError(
            f"input image {path}: {width}x{height} pixels is too small; both sides must be at least {MIN_IMAGE_SIDE}"
        )


def read_rgb_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read ``path`` as the official cache path sees it. Returns RGB uint8 [H, W, 3].

    Raises one ``ValueError`` naming the file and the problem for a missing, empty, undecodable, 16-bit, float or
    too-small image, or an unsupported extension.
    """
    path = os.fspath(path)
    _check_file(path)
    cv2 = import_cv2()
    # COLOR | ANYDEPTH: 3 channels (gray replicated, alpha dropped, EXIF orientation applied, exactly as the
    # official IMREAD_COLOR) but 16-bit samples stay 16-bit, so they can be refused instead of requantised.
    bgr = cv2.imread(path, cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH)
    if bgr is None:
        raise InputError(f"input image {path}: cannot be decoded as an image (corrupt file or unsupported format)")
    _check_pixels(bgr, path)
    return np.ascontiguousarray(bgr[:, :, ::-1])  # BGR -> RGB, [H, W, 3] uint8


def validate_input_image(path: str | os.PathLike[str]) -> tuple[int, int]:
    """Fail fast with one ``ValueError`` if ``path`` cannot serve as the input image; else its (height, width).

    It decodes the file once (milliseconds for a 720p PNG), so a truncated file is caught too; meant to run on
    every rank before any model loads.
    """
    height, width = read_rgb_image(path).shape[:2]
    return height, width


def read_image_size(path: str | os.PathLike[str]) -> tuple[int, int]:
    """(height, width) of an image, from its header (Pillow opens it lazily, without decoding the pixels)."""
    with Image.open(os.fspath(path)) as image:
        width, height = image.size
    return height, width
