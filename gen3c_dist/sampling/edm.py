"""EDM preconditioning, the Karras schedule and the Euler step, as GEN3C runs them (spec sections 4.1-4.3).

The official sampler is diffusers 0.32.2 ``EDMEulerScheduler(sigma_max=80, sigma_min=0.0002, sigma_data=0.5)``
with its defaults (Karras, rho 7, epsilon prediction, no churn). These functions reproduce its float32
arithmetic in the same order, without a scheduler object or hidden step index.
"""

from __future__ import annotations

import math

import torch

SIGMA_DATA = 0.5


def karras_sigmas(num_steps: int, *, sigma_min: float = 0.0002, sigma_max: float = 80.0, rho: float = 7.0) -> torch.Tensor:
    """``[n + 1]`` float32 noise levels, high to low, with a final 0 appended.

    Same arithmetic as diffusers: a float32 ramp, python-float endpoints, float32 power, so ``sigmas[0]`` is
    79.99998474 rather than 80 (spec 4.2; fact 8: sigma_min 0.0002 is the value GEN3C uses).
    """
    if num_steps < 1:
        raise ValueError(f"sampler.steps must be >= 1, got {num_steps}")
    ramp = torch.linspace(0, 1, num_steps, dtype=torch.float32)
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float32)])


def init_noise_sigma(sigma_max: float = 80.0) -> float:
    """``sqrt(sigma_max^2 + 1)``: the scale of the initial noise, 80.00625 and not 80 (spec 4.2)."""
    return math.sqrt(sigma_max**2 + 1)


def c_noise(sigma: torch.Tensor) -> torch.Tensor:
    """The DiT's timestep input, ``0.25 ln sigma``."""
    return 0.25 * torch.log(sigma)


def c_in(sigma: torch.Tensor | float, sigma_data: float = SIGMA_DATA) -> torch.Tensor | float:
    return 1 / ((sigma**2 + sigma_data**2) ** 0.5)


def c_skip(sigma: torch.Tensor | float, sigma_data: float = SIGMA_DATA) -> torch.Tensor | float:
    return sigma_data**2 / (sigma**2 + sigma_data**2)


def c_out(sigma: torch.Tensor | float, sigma_data: float = SIGMA_DATA) -> torch.Tensor | float:
    return sigma * sigma_data / (sigma**2 + sigma_data**2) ** 0.5


def denoised(x: torch.Tensor, net_output: torch.Tensor, sigma: torch.Tensor, sigma_data: float = SIGMA_DATA) -> torch.Tensor:
    """``D = c_skip x + c_out F`` (epsilon parameterisation with a positive c_out)."""
    return c_skip(sigma, sigma_data) * x + c_out(sigma, sigma_data) * net_output


def euler_step(
    x: torch.Tensor, net_output: torch.Tensor, *, sigma: torch.Tensor, sigma_next: torch.Tensor, sigma_data: float = SIGMA_DATA
) -> torch.Tensor:
    """One first-order Euler step in float32, cast back to the network output's dtype (as diffusers does)."""
    x32 = x.to(torch.float32)
    d = denoised(x32, net_output, sigma, sigma_data)
    derivative = (x32 - d) / sigma
    return (x32 + derivative * (sigma_next - sigma)).to(net_output.dtype)
