"""Attention backends from optional packages, imported only when selected.

* DeepSpeed ``DistributedAttention`` (Ulysses; tested on CPU/gloo). It issues three all-to-alls for Q, K, V plus
  one for the output (the native backend packs Q/K/V into one), and it cannot mask, so its local attention trims
  the padded keys itself (they sit at the end of the gathered sequence).
* TransformerEngine context-parallel ``DotProductAttention`` (CUDA only; cannot be installed or run on this CPU
  project, so this path is written against TE's documented API but untested). TE has no padding mask for the
  ``bshd`` format with CP, so a call whose token count needed padding (or whose shard length is odd, which TE's
  p2p path rejects) runs on the native backend instead, with one logged note.
"""

from __future__ import annotations

import logging
from typing import Callable

import torch
import torch.distributed as dist

from gen3c_dist.model.attention import AttentionOp, local_attention
from gen3c_dist.parallel.comm_counter import CommCounter
from gen3c_dist.parallel.layout import ParallelLayout
from gen3c_dist.parallel.sharding import TokenShard

log = logging.getLogger(__name__)


def _trimmed_local_attention(
    q_BLHD: torch.Tensor, k_BLHD: torch.Tensor, v_BLHD: torch.Tensor, *, real_tokens: int
) -> torch.Tensor:
    return local_attention(q_BLHD, k_BLHD[:, :real_tokens], v_BLHD[:, :real_tokens])


def init_deepspeed_comm(backend: str) -> None:
    """Let DeepSpeed adopt the existing torch process group (no-op if it already has)."""
    import deepspeed  # optional extra [ds]: only parallel.attention=deepspeed imports it
    import deepspeed.comm
    import deepspeed.ops

    if backend == "gloo":
        # Otherwise DeepSpeed JIT-compiles its shared-memory CPU op with g++ on every fresh machine (25-50 s).
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    if not deepspeed.comm.is_initialized():
        deepspeed.init_distributed(dist_backend=backend, verbose=False)


class DeepSpeedUlysses:
    """Built once per forward function; :meth:`bind` gives the seam op for one call's token shard."""

    def __init__(self, layout: ParallelLayout, *, counter: CommCounter | None) -> None:
        if layout.groups is None or layout.groups.ulysses is None or layout.ring != 1:
            raise ValueError(f"DeepSpeed Ulysses needs a Ulysses process group and ring 1; got {layout.describe()}")
        init_deepspeed_comm(dist.get_backend())
        from deepspeed.sequence.layer import DistributedAttention  # optional extra [ds]

        self.degree, self.counter = layout.ulysses, counter
        # Batch-first [B, l, H, Dh]: scatter heads (dim 2), gather the sequence (dim 1).
        self._attention = DistributedAttention(
            _trimmed_local_attention, layout.groups.ulysses, scatter_idx=2, gather_idx=1
        )

    def bind(self, shard: TokenShard) -> AttentionOp:
        def op(q_BlHD: torch.Tensor, k_BlHD: torch.Tensor, v_BlHD: torch.Tensor) -> torch.Tensor:
            if self.counter is not None:  # 3 input all-to-alls + 1 output, each keeping 1/u of the tensor
                u = self.degree
                self.counter.add("all_to_all", 4 * q_BlHD.numel() * q_BlHD.element_size() * (u - 1) // u)
            return self._attention(q_BlHD, k_BlHD, v_BlHD, 0, None, real_tokens=shard.tokens)

        return op


class TransformerEngineContextParallel:
    """TE ``DotProductAttention`` with its CP group: p2p (ring), a2a (Ulysses) or a2a+p2p (hybrid)."""

    def __init__(
        self,
        layout: ParallelLayout,
        *,
        num_heads: int,
        head_dim: int,
        fallback: Callable[[TokenShard], AttentionOp],
    ) -> None:
        import transformer_engine.pytorch as te  # CUDA extra [gpu]: only parallel.attention=transformer_engine

        groups = layout.groups
        if groups is None or not torch.cuda.is_available():
            raise ValueError("TransformerEngine context parallelism needs CUDA and a layout with process groups")
        if layout.ulysses > 1 and layout.ring > 1:
            comm_type, cp_group = "a2a+p2p", [groups.ulysses, groups.ring]
        else:
            comm_type, cp_group = ("a2a" if layout.ulysses > 1 else "p2p"), groups.cp
        self.num_heads, self.head_dim, self.cp, self.fallback = num_heads, head_dim, layout.cp, fallback
        self._attention = te.DotProductAttention(
            num_heads, head_dim, attention_dropout=0.0, qkv_format="bshd", attn_mask_type="no_mask",
            cp_group=cp_group, cp_global_ranks=list(layout.cp_ranks), cp_stream=torch.cuda.Stream(),
            cp_comm_type=comm_type,
        )
        self._warned = False

    def bind(self, shard: TokenShard) -> AttentionOp:
        if shard.padded != shard.tokens or shard.per_rank % 2:
            if not self._warned:
                log.warning(
                    "TransformerEngine CP cannot mask padded keys: %d tokens over %d ranks need padding or give an "
                    "odd shard, so this shape runs on the native backend", shard.tokens, self.cp,
                )
                self._warned = True
            return self.fallback(shard)

        def op(q_BlHD: torch.Tensor, k_BlHD: torch.Tensor, v_BlHD: torch.Tensor) -> torch.Tensor:
            o_BlX = self._attention(q_BlHD, k_BlHD, v_BlHD)  # TE returns [B, l, H * Dh]
            return o_BlX.view(*q_BlHD.shape)

        return op
