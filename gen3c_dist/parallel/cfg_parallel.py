"""Classifier-free guidance over the cfg axis: ``F = Fc + g * (Fc - Fu)``, one exchange per step.

With ``layout.cfg == 1`` the two passes run one after the other on this rank (the serial helper's behaviour).
With ``layout.cfg == 2`` cfg index 0 runs the cond pass and cfg index 1 the uncond pass concurrently; the two
outputs meet in one all-gather over the cfg group (``B*16*T*H*W`` elements each way, 7.2 MB per step in bf16 for
the 121-frame clip) and both ranks combine them with the same arithmetic as the serial path, so every rank of
the replica ends the step with the same ``F``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Mapping

import torch

from gen3c_dist.parallel.comm import all_gather
from gen3c_dist.parallel.comm_counter import CommCounter
from gen3c_dist.parallel.cp_forward import ForwardFn
from gen3c_dist.parallel.layout import ParallelLayout

if TYPE_CHECKING:
    from gen3c_dist.sampling.guidance import BranchInputs, SharedInputs


def combine_guidance(cond_F: torch.Tensor, uncond_F: torch.Tensor, guidance: float) -> torch.Tensor:
    """The official combination (spec 4.5), identical on every path so the results match bit for bit."""
    return cond_F + guidance * (cond_F - uncond_F)


def guided_output(
    forward_fn: ForwardFn,
    layout: ParallelLayout,
    x_scaled: torch.Tensor,
    timestep: torch.Tensor,
    cond_kwargs: Mapping[str, Any],
    uncond_kwargs: Mapping[str, Any],
    guidance: float,
    *,
    counter: CommCounter | None = None,
) -> torch.Tensor:
    """Guided network output for one denoising step; closes the step in ``counter``.

    ``cond_kwargs`` / ``uncond_kwargs`` are the remaining ``forward_fn`` arguments per branch
    (``crossattn_emb_BLcCt`` and ``condition_video_pose_BCTHW`` differ; mask, padding mask and fps are shared).
    """
    timestep_B = timestep.reshape(-1).expand(x_scaled.shape[0])  # as the serial helper passes it
    if layout.cfg == 1:
        cond_F = forward_fn(x_scaled, timestep_B, **cond_kwargs)
        uncond_F = forward_fn(x_scaled, timestep_B, **uncond_kwargs)
    else:
        if layout.groups is None or layout.groups.cfg is None:
            raise ValueError(f"cfg-parallel guidance needs a layout with process groups; got {layout.describe()}")
        mine = cond_kwargs if layout.cfg_index == 0 else uncond_kwargs
        own_F = forward_fn(x_scaled, timestep_B, **mine)
        both_2F = all_gather(own_F, group=layout.groups.cfg, counter=counter, kind="cfg_exchange")
        cond_F, uncond_F = both_2F[0], both_2F[1]  # cfg-group rank order = cfg index order
    guided_F = combine_guidance(cond_F, uncond_F, guidance)
    if counter is not None:
        counter.end_step()
    return guided_F


def branch_kwargs(branch: "BranchInputs", shared: "SharedInputs") -> dict[str, Any]:
    """The ``forward_fn`` keyword arguments of one guidance branch."""
    return {
        "crossattn_emb_BLcCt": branch.crossattn_emb_BLcCt,
        "condition_video_pose_BCTHW": branch.condition_video_pose_BCTHW,
        "condition_video_input_mask_B1THW": shared.condition_video_input_mask_B1THW,
        "padding_mask_B1HW": shared.padding_mask_B1HW,
        "fps": shared.fps,
    }


def cfg_parallel_guided_fn(
    forward_fn: ForwardFn,
    *,
    layout: ParallelLayout,
    cond: "BranchInputs",
    uncond: "BranchInputs",
    shared: "SharedInputs",
    guidance: float,
    policy: str = "official",
    counter: CommCounter | None = None,
) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``guided_fn(x_scaled, timestep) -> F`` for :func:`gen3c_dist.sampling.loop.sample`, cfg-parallel.

    Same keywords as :func:`gen3c_dist.sampling.guidance.serial_guided_fn`. A policy that skips the uncond pass
    (the non-official one, at guidance 1) leaves nothing for the second cfg rank, so it is refused.
    """
    if policy != "official" and guidance == 1.0:
        raise ValueError(
            f"sampler.guidance_policy={policy!r} skips the uncond pass at guidance 1, so parallel.cfg=2 has nothing "
            "to split; use parallel.cfg=1 or the official policy"
        )
    cond_kwargs, uncond_kwargs = branch_kwargs(cond, shared), branch_kwargs(uncond, shared)

    def guided(x_scaled: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        return guided_output(
            forward_fn, layout, x_scaled, timestep, cond_kwargs, uncond_kwargs, guidance, counter=counter
        )

    return guided
