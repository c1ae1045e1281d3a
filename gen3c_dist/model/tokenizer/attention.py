"""The tokenizer's attention: spatial within each frame, then causal over time.

Both are single-head with head dim = channels and scale 1/sqrt(channels), on GroupNorm(1)-normalised input,
with 1x1x1 conv projections and a residual. ``scaled_dot_product_attention`` replaces the official explicit
``bmm``/softmax: same maths, without materialising the (HW)^2 score matrix (14080^2 per frame at 704x1280).

Sequence-parallel seam: :class:`CausalTemporalAttention` has an optional ``attention_hook`` (``None`` by default)
that replaces the causal attention over the local tokens, so a rank holding a later time slice can attend to the
keys and values of the earlier slices (set by ``gen3c_dist.parallel.decode_parallel`` for one decode).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from gen3c_dist.model.tokenizer.layers import CausalGroupNorm, pointwise_conv


class _AttentionBase(nn.Module):
    """Shared parameters: keys ``norm.norm.*``, ``q``, ``k``, ``v``, ``proj_out`` (``.conv3d.*``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = CausalGroupNorm(channels)
        self.q = pointwise_conv(channels, channels)
        self.k = pointwise_conv(channels, channels)
        self.v = pointwise_conv(channels, channels)
        self.proj_out = pointwise_conv(channels, channels)

    def _qkv(self, x_BCTHW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h_BCTHW = self.norm(x_BCTHW)
        return self.q(h_BCTHW), self.k(h_BCTHW), self.v(h_BCTHW)


class SpatialAttention(_AttentionBase):
    """Every frame attends over its own H*W positions."""

    def forward(self, x_BCTHW: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x_BCTHW.shape

        def tokens(y_BCTHW: torch.Tensor) -> torch.Tensor:  # -> (B*T, 1, H*W, C)
            return y_BCTHW.permute(0, 2, 3, 4, 1).reshape(b * t, 1, h * w, c)

        q, k, v = (tokens(y) for y in self._qkv(x_BCTHW))
        out = F.scaled_dot_product_attention(q, k, v)  # default scale 1/sqrt(C), as official
        out_BCTHW = out.reshape(b, t, h, w, c).permute(0, 4, 1, 2, 3)
        return x_BCTHW + self.proj_out(out_BCTHW)


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


class CausalTemporalAttention(_AttentionBase):
    """Every spatial position attends over frames 0..t (lower-triangular mask)."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels)
        # (q, k, v) tokens (B*H*W, 1, T, C) -> attention output; None: :func:`causal_attention` over T.
        self.attention_hook: Optional[Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = None

    def forward(self, x_BCTHW: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x_BCTHW.shape

        def tokens(y_BCTHW: torch.Tensor) -> torch.Tensor:  # -> (B*H*W, 1, T, C)
            return y_BCTHW.permute(0, 3, 4, 2, 1).reshape(b * h * w, 1, t, c)

        q, k, v = (tokens(y) for y in self._qkv(x_BCTHW))
        attend = causal_attention if self.attention_hook is None else self.attention_hook
        out = attend(q, k, v)
        out_BCTHW = out.reshape(b, h, w, t, c).permute(0, 4, 3, 1, 2)
        return x_BCTHW + self.proj_out(out_BCTHW)


def spatio_temporal_attention(channels: int) -> nn.Sequential:
    """Official ``nn.Sequential(CausalAttnBlock, CausalTemporalAttnBlock)``: keys ``0.*`` and ``1.*``."""
    return nn.Sequential(SpatialAttention(channels), CausalTemporalAttention(channels))

