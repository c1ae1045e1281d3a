"""The cfg axis: the cond and uncond passes of each step on the two halves of a replica, one exchange per step.

Cfg index 0 runs the cond pass and cfg index 1 the uncond pass concurrently; the two outputs meet in one
all-gather over the cfg group (``B*16*T*H*W`` elements each way, 7.2 MB per step in bf16 for the 121-frame
clip) and both halves combine them with the formula of :mod:`gen3c_dist.sampling.guidance`, so every rank of
the replica ends the step with the same ``F``. This module only moves the tensors: :class:`CfgExchange` is the
:class:`gen3c_dist.sampling.guidance.CfgSplit` the guidance takes.
"""

from __future__ import annotations

from typing import Optional

import torch

from gen3c_dist.parallel.comm import all_gather
from gen3c_dist.parallel.comm_counter import CommCounter
from gen3c_dist.parallel.layout import ParallelLayout
from gen3c_dist.model.inputs import DiTInputs, ForwardFn
from gen3c_dist.sampling.guidance import guided_fn


class CfgExchange:
    """This rank's half of the cfg axis of ``layout`` (cfg = 2), counting its bytes in ``counter``."""

    def __init__(self, layout: ParallelLayout, *, counter: Optional[CommCounter] = None) -> None:
        self.group, self.index, self.counter = layout.groups.cfg, layout.cfg_index, counter

    def exchange(self, own_F: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        both_2F = all_gather(own_F, group=self.group, counter=self.counter, kind="cfg_exchange")
        return both_2F[0], both_2F[1]  # cfg-group rank order = cfg index order

    def end_step(self) -> None:
        if self.counter is not None:
            self.counter.end_step()


def split_for(layout: ParallelLayout, *, counter: Optional[CommCounter] = None) -> Optional[CfgExchange]:
    """The cfg split of ``layout``, or None when both passes run on every rank (cfg = 1)."""
    return CfgExchange(layout, counter=counter) if layout.cfg == 2 else None


def guided_output(forward_fn: ForwardFn, layout: ParallelLayout, x_scaled: torch.Tensor, timestep: torch.Tensor,
                  cond: DiTInputs, uncond: DiTInputs, guidance: float, *,
                  counter: Optional[CommCounter] = None) -> torch.Tensor:
    """One guided step's ``F`` on ``layout`` (cfg 1 or 2); closes the step in ``counter``."""
    split = split_for(layout, counter=counter)
    guided = guided_fn(forward_fn, cond=cond, uncond=uncond, guidance=guidance, split=split)(x_scaled, timestep)
    if split is None and counter is not None:
        counter.end_step()
    return guided
