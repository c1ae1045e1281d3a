"""One chunk's denoising: the sampler inputs built from a :class:`ChunkConditioning` (spec sections 4.3-4.5).

Runs on every rank of the video's group. ``guided_fn_builder`` decides how the cond/uncond passes are
scheduled: one after the other (:func:`gen3c_dist.sampling.guidance.serial_guided_fn`) or on the two halves of
a cfg-parallel group (:mod:`gen3c_dist.parallel`).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from gen3c_dist.config import SamplerConfig
from gen3c_dist.runner.conditioning_stage import ChunkConditioning
from gen3c_dist.sampling import edm
from gen3c_dist.sampling.guidance import BranchInputs, ForwardFn, SharedInputs
from gen3c_dist.sampling.loop import FrameCondition, GuidedFn, StepObserver, augment_noise, initial_noise, sample

GuidedFnBuilder = Callable[..., GuidedFn]  # (forward_fn, *, cond, uncond, shared, guidance, policy) -> GuidedFn


def branch_inputs(cond: ChunkConditioning) -> tuple[BranchInputs, BranchInputs]:
    """The uncond pass sees the negative prompt and zeroed warp latents (spec 4.5, fact 1)."""
    return BranchInputs(cond.text_cond, cond.pose), BranchInputs(cond.text_uncond, torch.zeros_like(cond.pose))


def shared_inputs(latent_shape: tuple[int, ...], *, fps: float, dtype: torch.dtype, device: torch.device) -> SharedInputs:
    B, _, T, H, W = latent_shape
    input_mask = torch.zeros(B, 1, T, H, W, dtype=dtype, device=device)
    input_mask[:, :, 0] = 1  # latent frame 0 is the condition frame, in both passes (spec 4.4)
    padding_mask = torch.zeros(B, 1, H, W, dtype=dtype, device=device)  # all zeros in GEN3C (spec 2.2)
    return SharedInputs(input_mask, padding_mask, float(fps))


def denoise_chunk(
    forward_fn: ForwardFn,
    cond: ChunkConditioning,
    *,
    guided_fn_builder: GuidedFnBuilder,
    sampler: SamplerConfig,
    seed: int,
    chunk_index: int,
    fps: float,
    dtype: torch.dtype,
    device: torch.device,
    observer: Optional[StepObserver] = None,
) -> torch.Tensor:
    """The clean latent [1, 16, T, H, W] of one chunk, identical on every rank of the group."""
    shape = tuple(cond.gt_latent.shape)
    sigmas = edm.karras_sigmas(sampler.steps, sigma_min=sampler.sigma_min, sigma_max=sampler.sigma_max).to(device)
    x_init = (initial_noise(shape, seed=seed, chunk_index=chunk_index) * edm.init_noise_sigma(sampler.sigma_max)).to(device)
    condition = FrameCondition(
        gt_latent_BCTHW=cond.gt_latent,
        # The official noise is seeded with the run seed and reused for every step and chunk (spec 1.7).
        augment_noise_BCTHW=augment_noise(shape, seed).to(device=device, dtype=dtype),
        num_frames=1,
        augment_sigma=sampler.condition_augment_sigma,
    )
    cond_branch, uncond_branch = branch_inputs(cond)
    guided = guided_fn_builder(
        forward_fn,
        cond=cond_branch,
        uncond=uncond_branch,
        shared=shared_inputs(shape, fps=fps, dtype=dtype, device=device),
        guidance=sampler.guidance,
        policy=sampler.guidance_policy,
    )
    return sample(guided, x_init=x_init, sigmas=sigmas, condition=condition, model_dtype=dtype, sigma_data=sampler.sigma_data, observer=observer)
