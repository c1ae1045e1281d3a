"""Fixture kind ``condition_encode``: condition latent from a PNG file and warp latents (KINDS_conditioning.md).

The fixture image is written to a PNG with PIL and goes through the project's file path
(``condition_latent_from_image``); ``mean_std.pt`` is written from the fixture statistics and read by the real
loader; the encoder is built from the fixture's ``encoder.jit``-keyed weights with strict accounting and no
decoder (encoder-only loading).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from gen3c_dist.conditioning.encode import condition_latent_from_image, encode_warped_frames, normalise_and_resize
from gen3c_dist.conditioning.image_io import read_condition_image
from gen3c_dist.model.tokenizer import (
    TokenizerNetworkConfig, VideoEncoder, VideoTokenizer, VideoTokenizerConfig, load_mean_std, load_module_state,
)
from tests.parity.fixture_case import FixtureCase


def _encoder_only_tokenizer(case: FixtureCase, folder: Path) -> VideoTokenizer:
    cfg = case.config
    config = VideoTokenizerConfig(
        pixel_chunk_duration=cfg["pixel_chunk_duration"], temporal_compression=cfg["temporal_compression_factor"],
        spatial_compression=cfg["spatial_compression_factor"], latent_ch=cfg["latent_ch"],
        sigma_data=cfg["sigma_data"],
    )
    assert config.latent_chunk_duration == cfg["latent_chunk_duration"]
    torch.save((case.tensors["latent_mean"], case.tensors["latent_std"]), folder / "mean_std.pt")
    mean, std = load_mean_std(folder / "mean_std.pt", config.latent_ch, config.latent_chunk_duration)
    encoder = VideoEncoder(TokenizerNetworkConfig.from_official(cfg["tokenizer_network"]))
    load_module_state(encoder, case.weights(), str(case.weights_path))
    return VideoTokenizer(config, encoder, None, mean, std)


def _raw_pose(tok: VideoTokenizer, warps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Unnormalised encoder outputs in the order [warp_0, mask_0, ...] (debug tensor)."""
    masks3 = (masks * 2 - 1).repeat(1, 1, 1, 3, 1, 1)
    raws = [tok.encode_raw(v[:, :, i].permute(0, 2, 1, 3, 4)) for i in range(warps.shape[2]) for v in (warps, masks3)]
    return torch.cat(raws, dim=1)


def run_case(case: FixtureCase) -> dict[str, torch.Tensor]:
    inputs, t = case.inputs, case.tensors
    height, width = inputs["height"], inputs["width"]
    image = t["image"].numpy().astype(np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        png = folder / "input.png"
        Image.fromarray(image, "RGBA" if image.shape[2] == 4 else "RGB").save(png)
        tok = _encoder_only_tokenizer(case, folder)
        gt_latent = condition_latent_from_image(tok, png, height, width)
        blended = read_condition_image(png)  # debug tensors: the same steps, one at a time
    frame = normalise_and_resize(blended, height, width, tok.dtype)
    padded = torch.cat([frame, frame.new_zeros(1, 3, tok.config.pixel_chunk_duration - 1, height, width)], dim=2)
    return {
        "gt_latent": gt_latent,
        "condition_video_pose": encode_warped_frames(tok, t["warps"], t["masks"], inputs["frame_buffer_max"]),
        "image_blended": torch.from_numpy(blended).float(),
        "image_resized": frame,
        "raw_condition_latent": tok.encode_raw(padded),
        "raw_condition_video_pose": _raw_pose(tok, t["warps"], t["masks"]),
    }
