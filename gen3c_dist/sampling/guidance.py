"""Classifier-free guidance on one device (spec 4.5).

GEN3C's uncond branch differs from the cond branch in two inputs: the negative-prompt text embedding and
zeroed warp latents. Everything else (x, timestep, condition mask, padding mask, fps) is shared.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from gen3c_dist.sampling.loop import GuidedFn

# The official semantics: both passes run at every guidance value, and guidance 1 means F = 2 Fc - Fu.
OFFICIAL = "official"
# Not the official output: at guidance 1 only the cond pass runs and F = Fc (half the DiT work).
SKIP_UNCOND_AT_GUIDANCE_ONE = "nonofficial_skip_uncond_at_guidance_1"
POLICIES = (OFFICIAL, SKIP_UNCOND_AT_GUIDANCE_ONE)


@dataclasses.dataclass(frozen=True)
class BranchInputs:
    """The inputs that differ between the cond and uncond passes."""

    crossattn_emb_BLcCt: torch.Tensor  # [B, 512, Ct]
    condition_video_pose_BCTHW: torch.Tensor  # [B, 32 * frame_buffer_max, T, H, W]


@dataclasses.dataclass(frozen=True)
class SharedInputs:
    condition_video_input_mask_B1THW: torch.Tensor
    padding_mask_B1HW: torch.Tensor
    fps: float


ForwardFn = Callable[..., torch.Tensor]  # the GEN3CDiT.forward keyword signature, minus attn_op


def runs_both_passes(policy: str, guidance: float) -> bool:
    """Whether every step runs the cond and the uncond pass: always under the official policy (spec 4.5)."""
    return policy == OFFICIAL or guidance != 1.0


def run_branch(forward_fn: ForwardFn, x_scaled: torch.Tensor, timestep: torch.Tensor, branch: BranchInputs, shared: SharedInputs) -> torch.Tensor:
    return forward_fn(
        x_scaled,
        timestep.expand(x_scaled.shape[0]),
        branch.crossattn_emb_BLcCt,
        condition_video_input_mask_B1THW=shared.condition_video_input_mask_B1THW,
        condition_video_pose_BCTHW=branch.condition_video_pose_BCTHW,
        padding_mask_B1HW=shared.padding_mask_B1HW,
        fps=shared.fps,
    )


def combine(f_cond: torch.Tensor, f_uncond: torch.Tensor, guidance: float) -> torch.Tensor:
    """``F_cond + g (F_cond - F_uncond)``; g = 1 is not "off" (fact 1)."""
    return f_cond + guidance * (f_cond - f_uncond)


def serial_guided_fn(
    forward_fn: ForwardFn,
    *,
    cond: BranchInputs,
    uncond: BranchInputs,
    shared: SharedInputs,
    guidance: float,
    policy: str = OFFICIAL,
) -> GuidedFn:
    """Both passes one after the other on this device (the official order)."""
    if policy not in POLICIES:
        raise ValueError(f"sampler.guidance_policy={policy!r} is not one of {POLICIES}")
    skip_uncond = policy == SKIP_UNCOND_AT_GUIDANCE_ONE and guidance == 1.0

    def guided(x_scaled: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        f_cond = run_branch(forward_fn, x_scaled, timestep, cond, shared)
        if skip_uncond:
            return f_cond
        return combine(f_cond, run_branch(forward_fn, x_scaled, timestep, uncond, shared), guidance)

    return guided
