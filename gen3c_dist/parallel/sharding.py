"""Token sharding on the flattened (t h w) sequence, done once before the blocks and undone once after.

The sequence of ``L`` tokens is padded to ``L_pad = cp * ceil(L / cp)`` and CP-local index ``c`` holds tokens
``[c * l, (c + 1) * l)`` with ``l = L_pad / cp``. Padding sits at the end of the global sequence, so every
attention backend knows a key is padding from its global position alone (``position >= L``) and excludes it from
the softmax. Padded query rows compute something harmless (zero input, zero RoPE angle, zero pos-emb) that the
gather drops. A rank's position tables are built for its own tokens only (:func:`shard_positions`).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist
import torch.nn.functional as F

from gen3c_dist.model.dit import GEN3CDiT, TokenPositions
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


def shard_positions(
    model: GEN3CDiT, grid_THW: tuple[int, int, int], *, fps: float | None, shard: TokenShard, device: torch.device
) -> TokenPositions:
    """This rank's ``[l, ...]`` position tables, built for its real tokens only and padded like :func:`shard_tokens`.

    Equal to the same rows of the whole sequence's tables. A padding row has a zero RoPE angle (cos 1, sin 0:
    the identity rotation) and a zero pos-emb.
    """
    real = shard.valid_keys(start=shard.start, length=shard.per_rank)
    own = model.token_positions(grid_THW, fps=fps, tokens=slice(shard.start, shard.start + real), device=device)
    missing = shard.per_rank - real
    if not missing:
        return own

    def pad(table_lX: torch.Tensor, value: float) -> torch.Tensor:
        return F.pad(table_lX, (0, 0, 0, missing), value=value)

    return TokenPositions(grid_THW, pad(own.rope_cos_LD, 1.0), pad(own.rope_sin_LD, 0.0), pad(own.pos_emb_LD, 0.0))


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
