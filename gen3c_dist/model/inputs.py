"""The DiT's call signature, stated once: its conditioning inputs (:class:`DiTInputs`) and :class:`ForwardFn`.

Everything that calls the network (the sampler's guidance, the context-parallel wrapper, the speed options)
passes :class:`DiTInputs` and types the callable as :class:`ForwardFn`; ``GEN3CDiT.forward`` keeps the official
keyword names so the parity fixtures map onto it one to one.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Protocol

import torch


@dataclasses.dataclass(frozen=True)
class DiTInputs:
    """The conditioning inputs of one DiT pass, besides x and the timestep (the official keyword names)."""

    crossattn_emb_BLcCt: torch.Tensor  # [B, 512, Ct] text embedding
    condition_video_input_mask_B1THW: torch.Tensor  # 1 on the condition latent frame(s)
    condition_video_pose_BCTHW: torch.Tensor  # [B, 32 * frame_buffer_max, T, H, W] warp / mask latents
    padding_mask_B1HW: torch.Tensor  # all zeros in GEN3C (spec 2.2)
    fps: float

    def keywords(self) -> dict:
        """Everything but the text embedding, as the forward's keyword arguments."""
        return {name: getattr(self, name) for name in ("condition_video_input_mask_B1THW",
                                                        "condition_video_pose_BCTHW", "padding_mask_B1HW", "fps")}


class ForwardFn(Protocol):
    """The DiT forward without its attention op (``GEN3CDiT.forward`` or a parallel wrapper): raw output F."""

    def __call__(self, x_BCTHW: torch.Tensor, timesteps_B: torch.Tensor, crossattn_emb_BLcCt: torch.Tensor, *,
                 condition_video_input_mask_B1THW: torch.Tensor, condition_video_pose_BCTHW: torch.Tensor,
                 padding_mask_B1HW: torch.Tensor, fps: Optional[float] = None) -> torch.Tensor: ...
