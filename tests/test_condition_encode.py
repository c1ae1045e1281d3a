"""Condition encoding: image reading/validation, normalisation, condition latents and warp latents."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from gen3c_dist.conditioning.encode import (
    condition_latent_from_image, condition_latent_from_uint8_frame, encode_warped_frames, frame_from_uint8,
    normalise_and_resize,
)
from gen3c_dist.conditioning.image_io import ConditionImageError, blend_onto_white, read_condition_image
from gen3c_dist.model.tokenizer import VideoTokenizer, VideoTokenizerConfig, tokenizer_preset

H, W = 16, 24


@pytest.fixture(scope="module")
def tok() -> VideoTokenizer:
    stats = torch.linspace(-0.3, 0.3, 32).reshape(1, 16, 2, 1, 1)
    base = VideoTokenizer.random(tokenizer_preset("tiny"), VideoTokenizerConfig(pixel_chunk_duration=9), seed=5)
    return VideoTokenizer(base.config, base.encoder, base.decoder, stats, 1.0 + stats.abs())


def _pixels(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _save(path, array: np.ndarray, mode: str | None = None):
    Image.fromarray(array, mode).save(path)
    return path


def test_rgba_blend_is_float64_truncating_onto_white():
    rgba = np.array([[[0, 0, 0, 43], [255, 255, 255, 43], [100, 100, 100, 100]],
                     [[7, 8, 9, 0], [7, 8, 9, 255], [0, 0, 0, 128]]], dtype=np.uint8)
    rgb = blend_onto_white(rgba)
    # 0 @ 43: exactly 212, float64 gives 211.99999999999997 -> 211 (the official quirk, kept on purpose).
    assert rgb[0, :, 0].tolist() == [211, 254, 194]
    assert rgb[1, 0].tolist() == [255, 255, 255] and rgb[1, 1].tolist() == [7, 8, 9]
    assert rgb[1, 2, 0] == 127


def test_read_rgba_and_grayscale_variants(tmp_path):
    rgba = _pixels((5, 7, 4))
    assert np.array_equal(read_condition_image(_save(tmp_path / "a.png", rgba, "RGBA")), blend_onto_white(rgba))
    gray = _pixels((5, 7), seed=1)
    got = read_condition_image(_save(tmp_path / "g.png", gray, "L"))
    assert got.shape == (5, 7, 3) and all(np.array_equal(got[..., c], gray) for c in range(3))
    la = _pixels((5, 7, 2), seed=2)
    expected = blend_onto_white(np.concatenate([np.repeat(la[..., :1], 3, 2), la[..., 1:]], 2))
    assert np.array_equal(read_condition_image(_save(tmp_path / "la.PNG", la, "LA")), expected)
    rgb = _pixels((6, 8, 3), seed=3)
    assert np.array_equal(read_condition_image(_save(tmp_path / "c.png", rgb)), rgb)
    jpg = read_condition_image(_save(tmp_path / "c.jpg", np.full((6, 8, 3), 90, np.uint8)))
    assert jpg.shape == (6, 8, 3) and np.abs(jpg.astype(int) - 90).max() <= 2


def test_grayscale_file_gives_the_latent_of_its_rgb_copy(tmp_path, tok):
    gray = _pixels((11, 13), seed=4)
    from_gray = condition_latent_from_image(tok, _save(tmp_path / "g.png", gray, "L"), H, W)
    from_rgb = condition_latent_from_image(tok, _save(tmp_path / "rgb.png", np.repeat(gray[..., None], 3, 2)), H, W)
    assert from_gray.shape == (1, 16, 2, H // 8, W // 8)
    assert torch.equal(from_gray, from_rgb)


@pytest.mark.parametrize("name, content, problem", [
    ("empty.png", b"", "the file is empty"),
    ("junk.png", b"definitely not a png", "not a readable PNG"),
    ("one.png", (np.zeros((1, 1, 3), np.uint8), None), "1x1 pixels is too small"),
    ("deep.png", (np.arange(30, dtype=np.uint16).reshape(5, 6) * 2000, None), "16-bit images are not supported"),
    ("picture.gif", b"GIF89a", "unsupported extension '.gif'"),
    ("absent.png", None, "no such file"),
])
def test_bad_images_raise_one_value_error_naming_the_file(tmp_path, tok, name, content, problem):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        _save(path, *content)
    with pytest.raises(ValueError, match=problem) as err:
        condition_latent_from_image(tok, path, H, W)
    assert isinstance(err.value, ConditionImageError) and str(path) in str(err.value)


def test_normalise_is_over_128_and_resize_is_antialiased_bicubic():
    rgb = np.array([[[0, 128, 255], [255, 0, 128]]], dtype=np.uint8).repeat(2, axis=0)
    same = normalise_and_resize(rgb, 2, 2, torch.float32)
    assert same.shape == (1, 3, 1, 2, 2)
    assert same[0, :, 0, 0, 0].tolist() == [-1.0, 0.0, 0.9921875]  # 255/128 - 1, not 1.0
    flat = normalise_and_resize(np.full((37, 53, 3), 200, np.uint8), 24, 32, torch.float32)
    torch.testing.assert_close(flat, torch.full((1, 3, 1, 24, 32), 200 / 128 - 1), rtol=0, atol=1e-6)
    ramp = np.repeat(np.arange(0, 256, 8, dtype=np.uint8)[None, :, None], 4, 0).repeat(3, 2)  # (4, 32, 3)
    down = normalise_and_resize(ramp, 4, 8, torch.float32)[0, 0, 0, 0]
    # Antialiased downscale by 4 averages groups of 4 samples (PIL kernel, a = -0.5); away from the borders a
    # linear ramp keeps the mean of each group.
    torch.testing.assert_close(down[2:6], torch.tensor([76.0, 108.0, 140.0, 172.0]) / 128 - 1, rtol=0, atol=1e-5)


def test_uint8_frame_path_is_over_255_without_resize(tok):
    frame = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 1, 3).expand(H, W, 3).contiguous()
    x = frame_from_uint8(frame)
    assert x.shape == (1, 3, 1, H, W) and x.dtype == torch.float32
    assert x[0, :, 0, 0, 0].tolist() == [-1.0, (torch.tensor(51.0) / 255.0 * 2 - 1).item(), 1.0]  # float32 maths
    latent = condition_latent_from_uint8_frame(tok, frame)
    video = torch.cat([x, torch.zeros(1, 3, 8, H, W)], dim=2)  # image + T-1 zero (mid-grey) frames
    torch.testing.assert_close(latent, tok.encode(video), rtol=0, atol=0)
    with pytest.raises(ValueError, match="uint8 frame"):
        frame_from_uint8(frame.float())


def _warps(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    masks = (torch.rand(1, 9, n, 1, H, W, generator=gen) > 0.4).float()
    warps = torch.where(masks.bool(), torch.rand(1, 9, n, 3, H, W, generator=gen) * 2 - 1, -1.0)
    return warps, masks


def test_warp_latents_order_and_zero_buffers(tok):
    warps, masks = _warps(2)
    pose = encode_warped_frames(tok, warps, masks, frame_buffer_max=3)
    assert pose.shape == (1, 96, 2, H // 8, W // 8)
    for i in range(2):
        warp = tok.encode(warps[:, :, i].permute(0, 2, 1, 3, 4))
        mask = tok.encode((masks[:, :, i] * 2 - 1).repeat(1, 1, 3, 1, 1).permute(0, 2, 1, 3, 4))
        torch.testing.assert_close(pose[:, 32 * i : 32 * i + 16], warp, rtol=0, atol=0)
        torch.testing.assert_close(pose[:, 32 * i + 16 : 32 * i + 32], mask, rtol=0, atol=0)
    assert pose[:, 64:].eq(0).all() and pose[:, :64].abs().amin(dim=(0, 2, 3, 4)).gt(0).any()
    assert encode_warped_frames(tok, warps[:, :, :0], masks[:, :, :0], 2).eq(0).all()


def test_warp_input_errors(tok):
    warps, masks = _warps(2)
    with pytest.raises(ValueError, match="exceed frame_buffer_max=1"):
        encode_warped_frames(tok, warps, masks, frame_buffer_max=1)
    with pytest.raises(ValueError, match="masks must be"):
        encode_warped_frames(tok, warps, masks[..., :8], frame_buffer_max=2)
    with pytest.raises(ValueError, match="T=8 frames"):
        encode_warped_frames(tok, warps[:, :8], masks[:, :8], frame_buffer_max=2)
