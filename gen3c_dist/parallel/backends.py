"""Choose the context-parallel attention op for a layout: native (Ulysses/ring/hybrid), DeepSpeed or TE."""

from __future__ import annotations

from typing import Callable

from gen3c_dist.config import ModelConfig
from gen3c_dist.model.attention import AttentionOp, local_attention
from gen3c_dist.parallel.comm_counter import CommCounter
from gen3c_dist.parallel.hybrid import HybridAttention
from gen3c_dist.parallel.layout import ParallelLayout
from gen3c_dist.parallel.sharding import TokenShard

AttentionFactory = Callable[[TokenShard], AttentionOp]


def attention_factory(
    layout: ParallelLayout,
    *,
    model_cfg: ModelConfig,
    counter: CommCounter | None,
    local_attn: AttentionOp = local_attention,
) -> AttentionFactory:
    """Build the backend once (DeepSpeed/TE set up state); the factory binds it to each call's token shard.

    ``local_attn`` is the single-device kernel of the native backend's Ulysses path (and of TE's fallback);
    the ring merges partial results with its own LSE attention and DeepSpeed trims keys around plain SDPA.
    """

    def native(shard: TokenShard) -> AttentionOp:
        return HybridAttention(layout, shard, counter=counter, local_attn=local_attn)

    if layout.attention in ("native", "ulysses", "ring"):
        return native
    if layout.attention == "deepspeed":
        from gen3c_dist.parallel.optional_backends import DeepSpeedUlysses  # imports deepspeed (optional)

        return DeepSpeedUlysses(layout, counter=counter).bind
    if layout.attention == "transformer_engine":
        from gen3c_dist.parallel.optional_backends import TransformerEngineContextParallel  # TE (CUDA extra)

        te = TransformerEngineContextParallel(
            layout, num_heads=model_cfg.num_heads, head_dim=model_cfg.head_dim, fallback=native
        )
        return te.bind
    raise ValueError(f"layout attention backend {layout.attention!r} is unknown")
