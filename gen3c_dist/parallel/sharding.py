"""Token sharding on the flattened (t h w) sequence, done once before the blocks and undone once after.

The sequence of ``L`` tokens is padded to ``L_pad = cp * ceil(L / cp)`` and CP-local index ``c`` holds tokens
``[c * l, (c + 1) * l)`` with ``l = L_pad / cp``. Padding sits at the end of the global sequence, so every
attention backend knows a key is padding from its global position alone (``position >= L``) and excludes it from
the softmax. Padded query rows compute something harmless (zero input, zero RoPE angle, zero pos-emb) that the
gather drops.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist
import torch.nn.functional as F

from gen3c_dist.model.dit import BlockContext
from gen3c_dist.parallel.comm import all_gather
from gen3c_dist.parallel.comm_counter import CommCounter


@dataclasses.dataclass(frozen=True)
class TokenShard:
    """Where this rank's tokens sit in the global (padded) sequence."""

    tokens: int  # real tokens L of the full sequence
    degree: int  # ranks sharing the sequence (the CP degree)
    index: int  # this rank's CP-local index

    def __post_init__(self) -> None:
        if self.tokens < 1 or self.degree < 1 or not 0 <= self.index < self.degree:
            raise ValueError(f"token shard {self} is invalid: need tokens >= 1, degree >= 1, 0 <= index < degree")

    @property
    def per_rank(self) -> int:
        return -(-self.tokens // self.degree)

    @property
    def padded(self) -> int:
        return self.per_rank * self.degree

    @property
    def start(self) -> int:
        return self.index * self.per_rank

    def valid_keys(self, *, start: int, length: int) -> int:
        """How many of the ``length`` tokens beginning at global position ``start`` are real (not padding)."""
        return max(0, min(length, self.tokens - start))


def shard_tokens(x_BLX: torch.Tensor, shard: TokenShard) -> torch.Tensor:
    """This rank's ``[B, l, ...]`` slice of a ``[B, L, ...]`` tensor, zero-padded past the real tokens."""
    local = x_BLX[:, shard.start : shard.start + shard.per_rank]
    missing = shard.per_rank - local.shape[1]
    if not missing:
        return local.contiguous()
    # F.pad lists dims from the last one backwards; only dim 1 (tokens) grows, at its end.
    return F.pad(local, (0, 0) * (x_BLX.ndim - 2) + (0, missing))


def shard_block_context(ctx: BlockContext, shard: TokenShard) -> BlockContext:
    """The context with its token-aligned tables (RoPE angles, pos-emb) cut to this rank's tokens."""
    rope_lD = shard_tokens(ctx.rope_LD[None], shard)[0]  # [l, Dh]; zero angle on padding = identity rotation
    pos_emb_lD = shard_tokens(ctx.pos_emb_LD[None], shard)[0]  # [l, D]
    return dataclasses.replace(ctx, rope_LD=rope_lD, pos_emb_LD=pos_emb_lD)


def gather_tokens(
    x_BlX: torch.Tensor, shard: TokenShard, *, group: dist.ProcessGroup | None, counter: CommCounter | None
) -> torch.Tensor:
    """Inverse of :func:`shard_tokens` over the CP group: the full ``[B, L, X]`` on every member."""
    if group is None:
        return x_BlX[:, : shard.tokens]
    parts_NBlX = all_gather(x_BlX, group=group, counter=counter, kind="gather_output")
    B, X = x_BlX.shape[0], x_BlX.shape[2:]
    full_BLX = parts_NBlX.transpose(0, 1).reshape(B, shard.padded, *X)
    return full_BLX[:, : shard.tokens]
