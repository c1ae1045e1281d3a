"""``make_cp_forward``: the DiT forward split over a context-parallel group.

embed (full, on every CP rank: the patch embed is a per-token linear, negligible next to the blocks)
-> shard tokens, RoPE angles and pos-emb once -> blocks with the distributed attention op
-> final layer on the local shard -> gather once -> unpatchify on every rank.

Why gather after the final layer rather than before it: the final layer is per token and maps D (4096 for the
7B model) to ``patch_out_features`` (16 * 1 * 2 * 2 = 64), so gathering its output moves 64x fewer bytes than
gathering the block output, and the final layer's work is split across ranks instead of repeated.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Protocol

import torch

from gen3c_dist.model.attention import AttentionOp, local_attention
from gen3c_dist.model.dit import GEN3CDiT
from gen3c_dist.parallel.backends import attention_factory
from gen3c_dist.parallel.comm_counter import CommCounter
from gen3c_dist.parallel.layout import ParallelLayout
from gen3c_dist.parallel.sharding import TokenShard, gather_tokens, shard_block_context, shard_tokens


class ForwardFn(Protocol):
    """``GEN3CDiT.forward`` without ``attn_op``: raw network output F ``[B, 16, T, H, W]``."""

    def __call__(
        self,
        x_BCTHW: torch.Tensor,
        timesteps_B: torch.Tensor,
        crossattn_emb_BLcCt: torch.Tensor,
        *,
        condition_video_input_mask_B1THW: torch.Tensor,
        condition_video_pose_BCTHW: torch.Tensor,
        padding_mask_B1HW: torch.Tensor,
        fps: float | None = None,
    ) -> torch.Tensor: ...


def make_cp_forward(
    model: GEN3CDiT,
    layout: ParallelLayout,
    *,
    counter: CommCounter | None = None,
    local_attn: AttentionOp = local_attention,
    wrap_attention: Optional[Callable[[AttentionOp], AttentionOp]] = None,
) -> ForwardFn:
    """A forward function that returns the full output on every rank of this rank's CP group.

    With a CP degree of 1 it is exactly ``model.forward`` (with ``local_attn`` as its attention op). Inputs must
    be identical on every CP rank (broadcast them from ``layout.replica_lead`` with
    :func:`gen3c_dist.parallel.broadcast.broadcast_tensors`). ``local_attn`` is the single-device kernel inside
    the distributed op; ``wrap_attention`` maps each call's bound op to what the blocks receive
    (:class:`gen3c_dist.model.acceleration.OpaqueSeam` keeps it out of compiled graphs).
    """
    wrap: Callable[[AttentionOp], AttentionOp] = wrap_attention or (lambda op: op)
    if layout.cp == 1:
        single_op = wrap(local_attn)

        def single(
            x_BCTHW: torch.Tensor, timesteps_B: torch.Tensor, crossattn_emb_BLcCt: torch.Tensor, **inputs: Any
        ) -> torch.Tensor:
            return model(x_BCTHW, timesteps_B, crossattn_emb_BLcCt, **inputs, attn_op=single_op)

        return single
    if layout.groups is None:
        raise ValueError(f"make_cp_forward needs a layout with process groups for {layout.describe()}")
    bind_attention = attention_factory(layout, model_cfg=model.cfg, counter=counter, local_attn=local_attn)

    def forward(
        x_BCTHW: torch.Tensor, timesteps_B: torch.Tensor, crossattn_emb_BLcCt: torch.Tensor, **inputs: Any
    ) -> torch.Tensor:
        x_BLD, ctx = model.embed(x_BCTHW, timesteps_B, crossattn_emb_BLcCt, **inputs)  # embed checks the names
        shard = TokenShard(tokens=x_BLD.shape[1], degree=layout.cp, index=layout.cp_index)
        x_BlD = shard_tokens(x_BLD, shard)
        x_BlD = model.run_blocks(x_BlD, shard_block_context(ctx, shard), attn_op=wrap(bind_attention(shard)))
        tokens_BlP = model.final_layer(x_BlD, ctx.affline_BD, ctx.adaln_lora_B3D)  # [B, l, ps*ps*pt*16]
        tokens_BLP = gather_tokens(tokens_BlP, shard, group=layout.groups.cp, counter=counter)
        return model.unpatchify(tokens_BLP, ctx.grid_THW)

    return forward
