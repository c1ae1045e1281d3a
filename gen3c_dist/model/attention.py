"""The model's one parallelism seam: the self-attention op.

Contract: ``attn_op(q_BLHD, k_BLHD, v_BLHD) -> o_BLHD``. Q and K arrive already normalised and rotated
(RoPE), the softmax scale is ``1/sqrt(D)`` and there is no mask. ``L`` is whatever sequence the caller holds:
the full sequence on one device, or a run of it when a caller puts a distributed op behind the seam (only
:func:`gen3c_dist.parallel.parallelize.parallelize_dit` does), which then does its own communication and returns
the same layout. Cross-attention always uses
:func:`local_attention`: its keys (the text) are replicated, so it never needs communication.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F


class AttentionOp(Protocol):
    def __call__(self, q_BLHD: torch.Tensor, k_BLHD: torch.Tensor, v_BLHD: torch.Tensor) -> torch.Tensor: ...


def local_attention(q_BLHD: torch.Tensor, k_BLHD: torch.Tensor, v_BLHD: torch.Tensor) -> torch.Tensor:
    """Softmax attention on one device with torch SDPA (TE ``DotProductAttention`` semantics, spec section 2.6)."""
    # [B, L, H, D] -> [B, H, L, D] for SDPA, and back.
    o_BHLD = F.scaled_dot_product_attention(q_BLHD.transpose(1, 2), k_BLHD.transpose(1, 2), v_BLHD.transpose(1, 2))
    return o_BHLD.transpose(1, 2)
