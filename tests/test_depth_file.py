"""User depth files (gen3c_dist.conditioning.depth_file): formats, resizing and one error per bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F

cv2 = pytest.importorskip("cv2")
from PIL import Image  # noqa: E402

from gen3c_dist.conditioning.depth import prepare_cache_image  # noqa: E402
from gen3c_dist.conditioning.depth_file import depth_from_file, load_depth_file  # noqa: E402

H, W = 24, 32  # input image and depth grid
TARGET_H, TARGET_W = 48, 80
K = np.array([[40.0, 0.0, 16.0], [0.0, 30.0, 12.0], [0.0, 0.0, 1.0]])


def _depth() -> np.ndarray:
    ys, xs = np.mgrid[0:H, 0:W]
    return (1.0 + 0.1 * xs + 0.05 * ys).astype(np.float32)  # [H, W], strictly positive


@pytest.fixture()
def image_path(tmp_path: Path) -> Path:
    rgb = np.random.default_rng(0).integers(0, 256, size=(H, W, 3), dtype=np.uint8)
    path = tmp_path / "image.png"
    Image.fromarray(rgb).save(path)
    return path


def test_npz_is_resized_like_moge(tmp_path: Path, image_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, depth=_depth(), intrinsics=K)
    est = depth_from_file(image_path, path, TARGET_H, TARGET_W)

    ref = F.interpolate(torch.tensor(_depth())[None, None], size=(TARGET_H, TARGET_W), mode="bilinear")
    torch.testing.assert_close(est.depth, ref)
    assert est.mask.shape == (1, 1, TARGET_H, TARGET_W) and est.mask.dtype == torch.bool and est.mask.all()
    sx, sy = TARGET_W / W, TARGET_H / H
    expected_k = torch.tensor([[40.0 * sx, 0, 16.0 * sx], [0, 30.0 * sy, 12.0 * sy], [0, 0, 1]])[None]
    torch.testing.assert_close(est.intrinsics, expected_k)
    torch.testing.assert_close(est.w2c, torch.eye(4)[None])
    # the cache image is exactly the MoGe path's, so only the depth source differs
    rgb = cv2.cvtColor(cv2.imread(str(image_path)), cv2.COLOR_BGR2RGB)
    torch.testing.assert_close(est.image, prepare_cache_image(rgb, TARGET_H, TARGET_W)[1], rtol=0, atol=0)


def test_npy_with_intrinsics_argument(tmp_path: Path) -> None:
    path = tmp_path / "d.npy"
    np.save(path, _depth()[None])  # a leading singleton axis is accepted
    depth, k = load_depth_file(path, intrinsics=K)
    np.testing.assert_array_equal(depth, _depth().astype(np.float64))
    np.testing.assert_array_equal(k, K)


@pytest.mark.parametrize(
    "suffix, writer",
    [
        (".intrinsics.json", lambda p: p.write_text(json.dumps({"fx": 40, "fy": 30, "cx": 16, "cy": 12}))),
        (".intrinsics.txt", lambda p: np.savetxt(p, K)),
        (".intrinsics.npy", lambda p: np.save(p, K)),
    ],
)
def test_npy_with_sidecar_intrinsics(tmp_path: Path, suffix: str, writer: Callable[[Path], object]) -> None:
    np.save(tmp_path / "scene.npy", _depth())
    writer(tmp_path / f"scene{suffix}")
    _, k = load_depth_file(tmp_path / "scene.npy")
    np.testing.assert_array_equal(k, K)


def test_intrinsics_json_matrix_file(tmp_path: Path) -> None:
    np.save(tmp_path / "d.npy", _depth())
    (tmp_path / "k.json").write_text(json.dumps(K.tolist()))
    np.testing.assert_array_equal(load_depth_file(tmp_path / "d.npy", intrinsics=str(tmp_path / "k.json"))[1], K)


def test_16bit_png_with_scale(tmp_path: Path, image_path: Path) -> None:
    millimetres = np.full((H, W), 1500, dtype=np.uint16)
    millimetres[0, 0] = 65535
    cv2.imwrite(str(tmp_path / "d.png"), millimetres)
    np.save(tmp_path / "k.npy", K)
    depth, _ = load_depth_file(tmp_path / "d.png", intrinsics=str(tmp_path / "k.npy"), png_scale=0.001)
    assert depth[5, 5] == pytest.approx(1.5) and depth[0, 0] == pytest.approx(65.535)
    est = depth_from_file(image_path, tmp_path / "d.png", H, W, intrinsics=K, png_scale=0.001)
    assert est.depth[0, 0, 10, 10].item() == pytest.approx(1.5)


def _save(name: str, array: np.ndarray, **extra: np.ndarray) -> Callable[[Path], Path]:
    def make(d: Path) -> Path:
        path = d / name
        if name.endswith(".npz"):
            np.savez(path, **({"depth": array} if array is not None else {}), **extra)
        else:
            np.save(path, array, allow_pickle=True)
        return path

    return make


def _with_k(k: np.ndarray) -> Callable[[Path], Path]:
    return _save("d.npz", _depth(), intrinsics=k)


def _bad(index: tuple[int, int], value: float) -> np.ndarray:
    depth = _depth()
    depth[index] = value
    return depth


def _touch(path: Path) -> Path:
    path.write_bytes(b"x")
    return path


def _png(d: Path, array: np.ndarray) -> Path:
    cv2.imwrite(str(d / "d.png"), array)
    return d / "d.png"


BAD_CASES = [
    (lambda d: d / "missing.npz", {}, "does not exist"),
    (lambda d: _touch(d / "d.exr"), {}, "unsupported suffix"),
    (_save("d.npz", _bad((3, 4), np.nan), intrinsics=K), {}, "1 NaN values (first at row 3, column 4)"),
    (_save("d.npz", _bad((0, 1), np.inf), intrinsics=K), {}, "1 infinite values"),
    (_save("d.npz", _bad((2, 2), 0.0), intrinsics=K), {}, "1 pixels have depth <= 0"),
    (_save("d.npz", _bad((2, 2), -1.0), intrinsics=K), {}, "depth <= 0"),
    (_save("d.npz", np.ones((H, W, 3), np.float32), intrinsics=K), {}, "must be 2-D"),
    (_save("d.npz", np.ones((H, W), bool), intrinsics=K), {}, "real numbers"),
    (_save("d.npz", None, intrinsics=K), {}, "no 'depth' key"),
    (_save("d.npy", np.array([{"a": 1}], dtype=object)), {"intrinsics": K}, "without pickle"),
    (_save("d.npy", _depth()), {}, "no intrinsics found"),
    (_save("d.npz", _depth(), intrinsics=K), {"intrinsics": K}, "intrinsics given twice"),
    (_with_k(np.eye(3)[:, :2]), {}, "real [3, 3] matrix"),
    (_with_k(np.where(np.eye(3) > 0, np.nan, 0.0)), {}, "NaN or inf"),
    (_with_k(K + np.array([[0, 2.0, 0], [0, 0, 0], [0, 0, 0]])), {}, "no skew"),
    (_with_k(K * np.array([[1], [1], [2.0]])), {}, "no skew"),
    (_with_k(K * np.array([[-1.0], [1], [1]]) * [[1, 1, -1], [1, 1, 1], [1, 1, 1]]), {}, "must be positive"),
    (_with_k(np.array([[0.9, 0, 0.5], [0, 1.2, 0.5], [0, 0, 1]])), {}, "look normalised"),
    (lambda d: _png(d, np.full((H, W), 9, np.uint8)), {"intrinsics": K, "png_scale": 1.0}, "must be 16-bit"),
    (lambda d: _png(d, np.full((H, W, 3), 9, np.uint16)), {"intrinsics": K, "png_scale": 1.0}, "one channel"),
    (lambda d: _png(d, np.full((H, W), 9, np.uint16)), {"intrinsics": K}, "needs a positive scale"),
    (_save("d.npy", _depth()), {"intrinsics": K, "png_scale": 0.001}, "applies to 16-bit PNG"),
]


@pytest.mark.parametrize("make, kwargs, message", BAD_CASES)
def test_bad_depth_files_raise_one_value_error(tmp_path: Path, make, kwargs: dict, message: str) -> None:
    path = make(tmp_path)
    with pytest.raises(ValueError) as info:
        load_depth_file(path, **kwargs)
    assert str(path) in str(info.value)
    assert message in str(info.value)


def test_bad_intrinsics_file_is_named(tmp_path: Path) -> None:
    np.save(tmp_path / "d.npy", _depth())
    (tmp_path / "k.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"intrinsics file .*k\.json: not valid JSON"):
        load_depth_file(tmp_path / "d.npy", intrinsics=str(tmp_path / "k.json"))


def test_size_mismatch_with_the_image(tmp_path: Path, image_path: Path) -> None:
    np.savez(tmp_path / "d.npz", depth=np.ones((H, W + 1), np.float32), intrinsics=K)
    with pytest.raises(ValueError) as info:
        depth_from_file(image_path, tmp_path / "d.npz", TARGET_H, TARGET_W)
    text = str(info.value)
    assert str(tmp_path / "d.npz") in text and "33x24" in text and "32x24" in text
