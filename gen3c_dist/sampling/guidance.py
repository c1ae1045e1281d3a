"""Classifier-free guidance, the one place that states it (spec 4.5): the inputs, the rule, the formula.

GEN3C's uncond branch differs from the cond branch in two inputs: the negative-prompt text embedding and
zeroed warp latents. Everything else (x, timestep, condition mask, padding mask, fps) is shared. Both passes
run at every guidance value under the official policy, so guidance 1 means ``F = 2 Fc - Fu``, not "off".

:func:`guided_fn` builds the sampler's ``guided_fn(x_scaled, timestep) -> F`` for one device (both passes one
after the other) or for a cfg-parallel replica, where each half runs one pass and a :class:`CfgSplit`
(``gen3c_dist.parallel.cfg_parallel.CfgExchange``) brings the two outputs together; the formula is the same
:func:`combine` either way, so the paths agree bit for bit.
"""

from __future__ import annotations

from typing import Optional, Protocol

import torch

from gen3c_dist.errors import InputError
from gen3c_dist.model.inputs import DiTInputs, ForwardFn
from gen3c_dist.sampling.loop import GuidedFn

# The official semantics: both passes run at every guidance value, and guidance 1 means F = 2 Fc - Fu.
OFFICIAL = "official"
# Not the official output: at guidance 1 only the cond pass runs and F = Fc (half the DiT work).
SKIP_UNCOND_AT_GUIDANCE_ONE = "nonofficial_skip_uncond_at_guidance_1"
POLICIES = (OFFICIAL, SKIP_UNCOND_AT_GUIDANCE_ONE)


class CfgSplit(Protocol):
    """The two halves of a cfg-parallel replica: ``index`` 0 runs the cond pass, 1 the uncond pass."""

    index: int

    def exchange(self, own_F: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(F_cond, F_uncond) on both halves, from this half's own output."""

    def end_step(self) -> None:
        """Called once per denoising step (closes the traffic counter's step)."""


def runs_both_passes(policy: str, guidance: float) -> bool:
    """Whether every step runs the cond and the uncond pass: always under the official policy (spec 4.5)."""
    return policy == OFFICIAL or guidance != 1.0


def combine(f_cond: torch.Tensor, f_uncond: torch.Tensor, guidance: float) -> torch.Tensor:
    """``F_cond + g (F_cond - F_uncond)``; g = 1 is not "off" (fact 1)."""
    return f_cond + guidance * (f_cond - f_uncond)


def run_pass(forward_fn: ForwardFn, x_scaled: torch.Tensor, timestep: torch.Tensor, inputs: DiTInputs) -> torch.Tensor:
    """One DiT pass; the timestep [1] is expanded to the batch."""
    return forward_fn(x_scaled, timestep.reshape(-1).expand(x_scaled.shape[0]), inputs.crossattn_emb_BLcCt,
                      **inputs.keywords())


def guided_fn(forward_fn: ForwardFn, *, cond: DiTInputs, uncond: DiTInputs, guidance: float, policy: str = OFFICIAL,
              split: Optional[CfgSplit] = None) -> GuidedFn:
    """``guided(x_scaled, timestep) -> F`` for :func:`gen3c_dist.sampling.loop.sample`.

    Without ``split`` both passes run here, in the official order; with it, this half runs its own pass and the
    split brings the other's. A policy that skips the uncond pass leaves the second half nothing to do, so a
    split with such a policy is refused.
    """
    if policy not in POLICIES:
        raise InputError(f"sampler.guidance_policy={policy!r} is not one of {POLICIES}")
    both = runs_both_passes(policy, guidance)
    if split is not None and not both:
        raise InputError(f"sampler.guidance_policy={policy!r} skips the uncond pass at guidance 1, so parallel.cfg=2 "
                         "has nothing to split; use parallel.cfg=1 or the official policy")

    def guided(x_scaled: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        if split is not None:
            f_cond, f_uncond = split.exchange(run_pass(forward_fn, x_scaled, timestep, (cond, uncond)[split.index]))
            split.end_step()
            return combine(f_cond, f_uncond, guidance)
        f_cond = run_pass(forward_fn, x_scaled, timestep, cond)
        if not both:
            return f_cond
        return combine(f_cond, run_pass(forward_fn, x_scaled, timestep, uncond), guidance)

    return guided
