"""GEN3C condition encoding: the condition latent and the warp latents (spec section 5.3, KINDS_conditioning.md).

(a) Condition latent (``get_condition_latent`` / ``create_condition_latent_from_input_frames``):
    * chunk 0, from an image file: uint8 RGB (see :mod:`image_io`) -> ``x / 128 - 1`` (not /127.5, on purpose,
      as official) -> antialiased bicubic resize to (H, W) without crop -> (1, 3, 1, H, W);
    * later autoregressive chunks, from the last decoded uint8 frame: ``x / 255 * 2 - 1``, no resize (spec 1.6);
    * then ``T - 1`` zero frames (mid-grey) are appended and the chunk is encoded; all ``Lt`` latent frames are
      returned, only frame 0 reaches the DiT.
(b) ``encode_warped_frames``: masks become ``2m - 1`` 3-channel videos; per buffer the warp then the mask are
    encoded; buffers up to ``frame_buffer_max`` that are missing are zero latents; channels are
    ``[warp_0, mask_0, warp_1, mask_1, ...]``.

Precision: ``dtype`` is the working dtype of the pixel tensors given to the tokenizer (bf16 on the GPU, float32
on the CPU). The resize itself runs in float32 and is rounded to ``dtype`` afterwards, as torchvision does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gen3c_dist.conditioning.image_io import read_condition_image
from gen3c_dist.model.tokenizer.video_tokenizer import VideoTokenizer


def normalise_and_resize(rgb_HW3: np.ndarray, height: int, width: int, dtype: torch.dtype) -> torch.Tensor:
    """uint8 (H0, W0, 3) -> (1, 3, 1, height, width) in [-1, 0.9921875]: ``/128 - 1``, bicubic antialias resize."""
    # float64 then float32 is exact: k/128 - 1 has at most 8 significant bits.
    x_13HW = torch.from_numpy(rgb_HW3.transpose(2, 0, 1)[None] / 128.0 - 1.0).to(torch.float32)
    if tuple(x_13HW.shape[-2:]) != (height, width):  # torchvision returns the input untouched at equal size
        # torchvision's BICUBIC + antialias on a tensor is exactly this call (PIL's a=-0.5 kernel).
        x_13HW = F.interpolate(x_13HW, size=(height, width), mode="bicubic", align_corners=False, antialias=True)
    return x_13HW.to(dtype).unsqueeze(2)


def frame_from_uint8(frame_HW3: torch.Tensor) -> torch.Tensor:
    """Last decoded uint8 frame (H, W, 3) -> (1, 3, 1, H, W) float32 ``x / 255 * 2 - 1`` (spec section 1.6)."""
    if frame_HW3.dtype != torch.uint8 or frame_HW3.dim() != 3 or frame_HW3.shape[-1] != 3:
        raise ValueError(f"expected a uint8 frame (H, W, 3), got {frame_HW3.dtype} {tuple(frame_HW3.shape)}")
    img01_3HW = frame_HW3.permute(2, 0, 1) / 255.0
    return img01_3HW.unsqueeze(0).unsqueeze(2) * 2 - 1


def condition_video(frame_B31HW: torch.Tensor, chunk_frames: int) -> torch.Tensor:
    """One conditioning frame + (T-1) zero (mid-grey) frames: the video whose encoding is the condition latent."""
    if frame_B31HW.dim() != 5 or frame_B31HW.shape[1:3] != (3, 1):
        raise ValueError(f"expected a frame (B, 3, 1, H, W), got {tuple(frame_B31HW.shape)}")
    b, _, _, h, w = frame_B31HW.shape
    return torch.cat([frame_B31HW, frame_B31HW.new_zeros(b, 3, chunk_frames - 1, h, w)], dim=2)


def condition_latent_from_frame(tokenizer: VideoTokenizer, frame_B31HW: torch.Tensor) -> torch.Tensor:
    """One conditioning frame + (T-1) zero frames -> normalised latent (B, 16, Lt, h, w) in ``tokenizer.dtype``."""
    frame_B31HW = frame_B31HW.to(tokenizer.device)  # build the 121-frame chunk where the encoder runs
    latent = tokenizer.encode(condition_video(frame_B31HW, tokenizer.config.pixel_chunk_duration))
    # Official get_condition_latent ends with .to(bfloat16): the model dtype (float32 in CPU runs).
    return latent.to(tokenizer.dtype)


def condition_latent_from_image(tokenizer: VideoTokenizer, path: str | Path, height: int,
                                width: int) -> torch.Tensor:
    """Chunk 0: image file -> condition latent (1, 16, Lt, height/8, width/8). Bad files raise ValueError."""
    frame = normalise_and_resize(read_condition_image(path), height, width, tokenizer.dtype)
    return condition_latent_from_frame(tokenizer, frame)


def condition_latent_from_uint8_frame(tokenizer: VideoTokenizer, frame_HW3: torch.Tensor) -> torch.Tensor:
    """Chunks k >= 1: the last decoded uint8 frame -> condition latent. The float32 frame goes in as is."""
    return condition_latent_from_frame(tokenizer, frame_from_uint8(frame_HW3))


def _check_warps(warps: torch.Tensor, masks: torch.Tensor, frame_buffer_max: int, chunk: int) -> None:
    if warps.dim() != 6 or warps.shape[3] != 3:
        raise ValueError(f"warps must be (B, T, n_buf, 3, H, W), got {tuple(warps.shape)}")
    if warps.shape[1] % chunk:
        raise ValueError(f"warps have T={warps.shape[1]} frames; T must be a multiple of pixel_chunk_duration={chunk}")
    want = warps.shape[:3] + (1,) + warps.shape[4:]
    if tuple(masks.shape) != tuple(want):
        raise ValueError(f"masks must be {tuple(want)} to match the warps, got {tuple(masks.shape)}")
    if warps.shape[2] > frame_buffer_max:
        raise ValueError(f"{warps.shape[2]} warp buffers exceed frame_buffer_max={frame_buffer_max}")


def encode_warped_frames(tokenizer: VideoTokenizer, warps_BTN3HW: torch.Tensor, masks_BTN1HW: torch.Tensor,
                         frame_buffer_max: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Rendered cache buffers -> ``condition_video_pose`` (B, 32*frame_buffer_max, Lt, h, w).

    Buffer 0 is the newest. Warps are in [-1, 1], masks in {0, 1}. With 0 buffers the result is all zeros (the
    official code raises a NameError there).
    """
    _check_warps(warps_BTN3HW, masks_BTN1HW, frame_buffer_max, tokenizer.config.pixel_chunk_duration)
    dtype = tokenizer.dtype if dtype is None else dtype
    latents = [tokenizer.encode(video).contiguous() for video in warp_videos(warps_BTN3HW, masks_BTN1HW, dtype)]
    b, t, _, _, h, w = warps_BTN3HW.shape
    cfg = tokenizer.config
    lt = t // cfg.pixel_chunk_duration * cfg.latent_chunk_duration
    zero_shape = (b, cfg.latent_ch, lt, h // cfg.spatial_compression, w // cfg.spatial_compression)
    return assemble_pose(latents, frame_buffer_max, zero_shape, dtype=dtype, device=tokenizer.device)


def warp_videos(warps_BTN3HW: torch.Tensor, masks_BTN1HW: torch.Tensor, dtype: torch.dtype) -> list[torch.Tensor]:
    """The videos to encode, in channel order: per buffer the warp, then its mask as ``2m - 1`` in 3 channels."""
    masks_BTN3HW = (masks_BTN1HW * 2 - 1).repeat(1, 1, 1, 3, 1, 1)  # {0, 1} -> {-1, +1}, as a 3-channel video
    return [video_BTN3HW[:, :, i].permute(0, 2, 1, 3, 4).to(dtype)  # [B, 3, T, H, W]
            for i in range(warps_BTN3HW.shape[2]) for video_BTN3HW in (warps_BTN3HW, masks_BTN3HW)]


def assemble_pose(latents: list[torch.Tensor], frame_buffer_max: int, zero_shape: tuple[int, ...], *,
                  dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``[warp_0, mask_0, warp_1, ...]`` latents, zero latents for the missing buffers, along channels."""
    zeros = torch.zeros(zero_shape, dtype=dtype, device=latents[0].device if latents else device)
    missing = 2 * frame_buffer_max - len(latents)
    return torch.cat(list(latents) + [zeros] * missing, dim=1)
