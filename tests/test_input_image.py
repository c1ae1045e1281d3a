"""Input-image reader and validator of the depth / cache path (gen3c_dist.conditioning.input_image)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
from PIL import Image  # noqa: E402

from gen3c_dist.conditioning.input_image import MIN_IMAGE_SIDE, read_rgb_image, validate_input_image  # noqa: E402


def _official_read(path: Path) -> np.ndarray:
    """What the official script does (spec section 7.1 step 1)."""
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def _rgb_pattern(h: int = 20, w: int = 24) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_rgb_png_is_read_as_rgb(tmp_path: Path) -> None:
    rgb = _rgb_pattern()
    path = tmp_path / "rgb.png"
    Image.fromarray(rgb).save(path)
    out = read_rgb_image(path)
    assert out.dtype == np.uint8 and out.shape == (20, 24, 3)
    np.testing.assert_array_equal(out, rgb)  # channel order is RGB, not cv2's BGR
    validate_input_image(str(path))


def test_grayscale_is_replicated(tmp_path: Path) -> None:
    gray = _rgb_pattern()[:, :, 0]
    path = tmp_path / "gray.png"
    Image.fromarray(gray, mode="L").save(path)
    out = read_rgb_image(path)
    np.testing.assert_array_equal(out, np.repeat(gray[:, :, None], 3, axis=2))
    np.testing.assert_array_equal(out, _official_read(path))


def test_rgba_drops_alpha_without_blending(tmp_path: Path) -> None:
    rgba = np.zeros((20, 24, 4), dtype=np.uint8)
    rgba[..., :3] = (10, 20, 30)
    rgba[..., 3] = 0  # fully transparent: the condition-latent path would blend this to white, we must not
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    out = read_rgb_image(path)
    assert out.shape == (20, 24, 3)
    assert (out == np.array([10, 20, 30], dtype=np.uint8)).all()
    np.testing.assert_array_equal(out, _official_read(path))


def _png16(tmp_path: Path) -> Path:
    path = tmp_path / "deep.png"
    cv2.imwrite(str(path), np.full((20, 20, 3), 0x1234, dtype=np.uint16))
    return path


def test_uppercase_extension_and_jpeg(tmp_path: Path) -> None:
    rgb = np.full((20, 24, 3), (200, 100, 50), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "upper.PNG", format="PNG")
    np.testing.assert_array_equal(read_rgb_image(tmp_path / "upper.PNG"), rgb)
    Image.fromarray(rgb).save(tmp_path / "photo.jpg", quality=95)
    np.testing.assert_array_equal(read_rgb_image(tmp_path / "photo.jpg"), _official_read(tmp_path / "photo.jpg"))


def _write_bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _truncated_png(tmp_path: Path) -> Path:
    good = tmp_path / "good.png"
    Image.fromarray(_rgb_pattern(64, 64)).save(good)
    return _write_bytes(tmp_path / "truncated.png", good.read_bytes()[:40])


def _tiny(tmp_path: Path, h: int, w: int) -> Path:
    path = tmp_path / f"tiny_{h}x{w}.png"
    Image.fromarray(_rgb_pattern(h, w)).save(path)
    return path


def _float_tiff_named_png(tmp_path: Path) -> Path:
    """cv2 decodes by content, not by name: a float TIFF saved as .png reaches the dtype check."""
    tiff = tmp_path / "float.tiff"
    cv2.imwrite(str(tiff), np.full((20, 20, 3), 0.5, dtype=np.float32))
    return _write_bytes(tmp_path / "float.png", tiff.read_bytes())


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: d / "missing.png", "does not exist"),
        (lambda d: d, "not a regular file"),
        (lambda d: _write_bytes(d / "empty.png", b""), "empty"),
        (lambda d: _write_bytes(d / "noise.png", b"this is not an image at all"), "cannot be decoded"),
        (_truncated_png, "cannot be decoded"),
        (lambda d: _tiny(d, 1, 1), "1x1 pixels is too small"),
        (lambda d: _tiny(d, MIN_IMAGE_SIDE - 1, 40), "too small"),
        (_png16, "16-bit images are not supported"),
        (_float_tiff_named_png, "float32-sample images are not supported"),
        (lambda d: _write_bytes(d / "image.bmp", b"BM"), "unsupported extension '.bmp'"),
    ],
)
def test_bad_images_raise_one_value_error(tmp_path: Path, make, message: str) -> None:
    path = make(tmp_path)
    with pytest.raises(ValueError) as info:
        validate_input_image(path)
    assert str(path) in str(info.value)
    assert message in str(info.value)


def test_minimum_size_is_accepted(tmp_path: Path) -> None:
    path = _tiny(tmp_path, MIN_IMAGE_SIDE, MIN_IMAGE_SIDE)
    assert read_rgb_image(path).shape == (MIN_IMAGE_SIDE, MIN_IMAGE_SIDE, 3)
