"""``make_cp_forward``: the DiT forward split over a context-parallel group.

Per forward: patchify on every CP rank (a reshape) -> shard the patches -> embed this rank's tokens only ->
blocks with the distributed attention op -> final layer on the local shard -> gather once -> unpatchify on
every rank. Once per chunk geometry (latent grid and fps, which a chunk's 70 forwards share): the token shard,
its RoPE cos/sin and pos-emb rows (built for this rank's tokens only) and the attention op bound to the shard.

Why gather after the final layer rather than before it: the final layer is per token and maps D (4096 for the
7B model) to ``patch_out_features`` (16 * 1 * 2 * 2 = 64), so gathering its output moves 64x fewer bytes than
gathering the block output, and the final layer's work is split across ranks instead of repeated.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Optional

import torch

from gen3c_dist.model.acceleration import bind_forward
from gen3c_dist.model.attention import AttentionOp, local_attention
from gen3c_dist.model.dit import GEN3CDiT, TokenPositions
from gen3c_dist.model.inputs import ForwardFn
from gen3c_dist.parallel.backends import attention_factory
from gen3c_dist.parallel.comm_counter import CommCounter
from gen3c_dist.parallel.layout import ParallelLayout
from gen3c_dist.parallel.sharding import TokenShard, gather_tokens, shard_positions, shard_tokens


def make_cp_forward(
    model: GEN3CDiT,
    layout: ParallelLayout,
    *,
    counter: CommCounter | None = None,
    local_attn: AttentionOp = local_attention,
    wrap_attention: Optional[Callable[[AttentionOp], AttentionOp]] = None,
) -> ForwardFn:
    """A forward function that returns the full output on every rank of this rank's CP group.

    With a CP degree of 1 it is the single-device forward (:func:`gen3c_dist.model.acceleration.bind_forward`
    with ``local_attn``). Inputs must be identical on every CP rank (broadcast them from ``layout.replica_lead``
    with :func:`gen3c_dist.parallel.broadcast.broadcast_tensors`). ``local_attn`` is the single-device kernel
    inside the distributed op; ``wrap_attention`` maps the op bound to a token shard to what the blocks receive
    (:class:`gen3c_dist.model.acceleration.OpaqueSeam` keeps it out of compiled graphs).
    """
    wrap: Callable[[AttentionOp], AttentionOp] = wrap_attention or (lambda op: op)
    if layout.cp == 1:
        return bind_forward(model, wrap(local_attn))
    bind_attention = attention_factory(layout, model_cfg=model.cfg, counter=counter, local_attn=local_attn)

    @functools.lru_cache(maxsize=1)
    def chunk_geometry(
        grid_THW: tuple[int, int, int], fps: float | None, device: torch.device
    ) -> tuple[TokenShard, TokenPositions, AttentionOp]:
        shard = TokenShard(tokens=math.prod(grid_THW), degree=layout.cp, index=layout.cp_index)
        positions = shard_positions(model, grid_THW, fps=fps, shard=shard, device=device)
        return shard, positions, wrap(bind_attention(shard))

    def forward(
        x_BCTHW: torch.Tensor, timesteps_B: torch.Tensor, crossattn_emb_BLcCt: torch.Tensor, *,
        fps: float | None = None, **conditioning: Any,
    ) -> torch.Tensor:
        patches_BLP, grid_THW = model.patch_tokens(x_BCTHW, **conditioning)  # checks the names and shapes
        shard, positions, attn_op = chunk_geometry(grid_THW, fps, x_BCTHW.device)
        x_BlD = model.embed_tokens(shard_tokens(patches_BLP, shard))
        ctx = model.block_context(timesteps_B, crossattn_emb_BLcCt, positions)
        x_BlD = model.run_blocks(x_BlD, ctx, attn_op=attn_op)
        tokens_BlP = model.final_layer(x_BlD, ctx.affline_BD, ctx.adaln_lora_B3D)  # [B, l, ps*ps*pt*16]
        tokens_BLP = gather_tokens(tokens_BlP, shard, group=layout.groups.cp, counter=counter)
        return model.unpatchify(tokens_BLP, grid_THW)

    return forward
