"""The native context-parallel attention op: Ulysses inside, ring across (either degree may be 1).

* ulysses = cp, ring = 1: pure Ulysses. After the all-to-all a rank has the whole padded sequence for its heads,
  trims the padded keys off and runs the local attention kernel (``local_attn``, default plain SDPA).
* ulysses = 1, ring = cp: pure ring attention over the token shards.
* both > 1 (USP): the all-to-all inside each Ulysses group makes ring block ``p`` = the tokens of Ulysses group
  ``p`` (``u * l`` tokens, ``H / u`` heads); the ring then runs over the ranks holding the same head group.
"""

from __future__ import annotations

import torch

from gen3c_dist.model.attention import AttentionOp, local_attention
from gen3c_dist.parallel.comm_counter import CommCounter
from gen3c_dist.parallel.layout import ParallelLayout
from gen3c_dist.parallel.ring import ring_attention
from gen3c_dist.parallel.sharding import TokenShard
from gen3c_dist.parallel.ulysses import heads_to_sequence, sequence_to_heads


class HybridAttention:
    """``attn_op(q_BlHD, k_BlHD, v_BlHD) -> o_BlHD`` on this rank's token shard (the model's seam)."""

    def __init__(
        self,
        layout: ParallelLayout,
        shard: TokenShard,
        *,
        counter: CommCounter | None,
        local_attn: AttentionOp = local_attention,
    ) -> None:
        if shard.degree != layout.cp or shard.index != layout.cp_index:
            raise ValueError(f"token shard {shard} does not belong to CP index {layout.cp_index} of {layout.cp}")
        self.layout, self.shard, self.counter = layout, shard, counter
        self.local_attn = local_attn  # any kernel of gen3c_dist.model.kernels; the ring keeps its LSE merge

    def __call__(self, q_BlHD: torch.Tensor, k_BlHD: torch.Tensor, v_BlHD: torch.Tensor) -> torch.Tensor:
        layout, groups = self.layout, self.layout.groups
        u = layout.ulysses
        if u > 1:
            q, k, v = sequence_to_heads(q_BlHD, k_BlHD, v_BlHD, group=groups.ulysses, degree=u, counter=self.counter)
        else:
            q, k, v = q_BlHD, k_BlHD, v_BlHD
        if layout.ring > 1:
            o = ring_attention(
                q, k, v, group=groups.ring, ranks=layout.ring_ranks, position=layout.ring_index,
                real_tokens=self.shard.tokens, counter=self.counter,
            )
        else:  # the whole padded sequence is here: drop the padded keys (they sit at the end)
            valid = self.shard.tokens
            o = self.local_attn(q, k[:, :valid], v[:, :valid])
        if u > 1:
            o = heads_to_sequence(o, group=groups.ulysses, degree=u, counter=self.counter)
        return o
