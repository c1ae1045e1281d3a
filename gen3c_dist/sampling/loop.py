"""The GEN3C denoising loop for one chunk: frame-0 conditioning, guidance and Euler steps (spec 4.3-4.5).

Everything is a pure function of its arguments. The network enters as ``guided_fn(x_scaled, timestep) -> F``,
the guided raw output ``F = F_cond + g (F_cond - F_uncond)``; :mod:`gen3c_dist.sampling.guidance` builds it
serially, and :mod:`gen3c_dist.parallel` builds the cfg-parallel version with the same signature.

Shape letters: B batch (1 in GEN3C), C latent channels (16), T latent frames, H/W latent rows/cols.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import numpy as np
import torch

from gen3c_dist.sampling import edm

GuidedFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
StepObserver = Callable[[int, dict[str, torch.Tensor]], None]


@dataclasses.dataclass(frozen=True)
class FrameCondition:
    """The clean latent that pins the first latent frame(s), and its fixed augmentation noise (spec 4.4)."""

    gt_latent_BCTHW: torch.Tensor  # only frames [:num_frames] are read
    augment_noise_BCTHW: torch.Tensor  # the same tensor at every step and every chunk
    num_frames: int = 1
    augment_sigma: float = 0.001


def augment_noise(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """``np.random.RandomState(seed).standard_normal`` in float32: the official ``arch_invariant_rand``."""
    return torch.from_numpy(np.random.RandomState(seed).standard_normal(shape).astype(np.float32))


def initial_noise(shape: tuple[int, ...], *, seed: int, chunk_index: int) -> torch.Tensor:
    """Unit-variance starting noise, drawn full size from a CPU generator seeded by (seed, chunk).

    The official run draws from the global CUDA RNG (spec 1.7), which no other device reproduces; a CPU
    generator makes the result independent of the GPU model and of the context-parallel degree.
    """
    generator = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(chunk_index))
    return torch.randn(shape, generator=generator, dtype=torch.float32)


def condition_active(sigma: torch.Tensor, augment_sigma: float) -> bool:
    """Frame injection switches off once ``augment_sigma >= sigma`` (the last two of 35 steps, spec 4.4)."""
    return not bool(augment_sigma >= sigma)


def inject_condition(x: torch.Tensor, cond: FrameCondition, sigma_model: torch.Tensor, sigma_data: float = edm.SIGMA_DATA) -> torch.Tensor:
    """Replace the condition frames by ``(gt + a n) c_in(a) / c_in(sigma)``, so the net sees ~2 gt there."""
    a, k = cond.augment_sigma, cond.num_frames
    x_in = x.clone()
    augmented = (cond.gt_latent_BCTHW[:, :, :k] + a * cond.augment_noise_BCTHW[:, :, :k]) * edm.c_in(a, sigma_data) / edm.c_in(sigma_model, sigma_data)
    x_in[:, :, :k] = augmented.to(x.dtype)
    return x_in


def replace_condition_output(
    f: torch.Tensor, x_in: torch.Tensor, cond: FrameCondition, sigma_model: torch.Tensor, sigma_data: float = edm.SIGMA_DATA
) -> torch.Tensor:
    """Overwrite F on the condition frames so that the denoised value there is exactly ``gt``."""
    k = cond.num_frames
    f = f.clone()
    forced = (cond.gt_latent_BCTHW[:, :, :k] - edm.c_skip(sigma_model, sigma_data) * x_in[:, :, :k]) / edm.c_out(sigma_model, sigma_data)
    f[:, :, :k] = forced.to(f.dtype)
    return f


def sample(
    guided_fn: GuidedFn,
    *,
    x_init: torch.Tensor,
    sigmas: torch.Tensor,
    condition: FrameCondition,
    model_dtype: torch.dtype = torch.float32,
    sigma_data: float = edm.SIGMA_DATA,
    observer: Optional[StepObserver] = None,
) -> torch.Tensor:
    """Run all steps from ``x_init`` (already scaled by ``init_noise_sigma``); returns the final latent.

    ``sigmas`` is the float32 schedule with its final 0. The model-side formulas (condition injection and
    output replacement) use sigma rounded to ``model_dtype`` while the Euler step uses float32, as the
    official bf16 run does (spec 4.2, quirk 8); in float32 both are the same.
    """
    x = x_init.to(model_dtype)
    timesteps = edm.c_noise(sigmas[:-1])
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        sigma_model = sigma.to(model_dtype).to(torch.float32)
        active = condition_active(sigma_model, condition.augment_sigma)
        x_in = inject_condition(x, condition, sigma_model, sigma_data) if active else x
        x_scaled = (edm.c_in(sigma, sigma_data) * x_in.to(torch.float32)).to(model_dtype)
        f = guided_fn(x_scaled, timesteps[i].reshape(1))
        if active:
            f = replace_condition_output(f, x_in, condition, sigma_model, sigma_data)
        x = edm.euler_step(x_in, f, sigma=sigma, sigma_next=sigma_next, sigma_data=sigma_data)
        if observer is not None:
            observer(i, {"x_in": x_in, "net_input": x_scaled, "model_output": f, "x": x})
    return x
