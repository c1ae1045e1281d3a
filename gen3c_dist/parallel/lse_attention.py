"""Block attention that also returns the log-sum-exp, and the fp32 merge of partial results.

Ring attention computes softmax attention of the local queries against one K/V block at a time and combines the
partials exactly: with ``lse_i = log sum_j exp(s_ij)`` per block, the merged output is the LSE-weighted average
of the block outputs. Merging is done in fp32 whatever the activation dtype, so the result does not drift with the
ring size (the bf16-partials problem of ring-flash-attention).
"""

from __future__ import annotations

import torch

_FLASH_CUDA_DTYPES = (torch.float16, torch.bfloat16)


def _math_attention_lse(
    q_BHLD: torch.Tensor, k_BHSD: torch.Tensor, v_BHSD: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference path in fp32: exact, but materialises the [L, S] score matrix."""
    scale = q_BHLD.shape[-1] ** -0.5
    scores_BHLS = torch.matmul(q_BHLD.float(), k_BHSD.float().transpose(-1, -2)) * scale
    lse_BHL = torch.logsumexp(scores_BHLS, dim=-1)
    probs_BHLS = torch.exp(scores_BHLS - lse_BHL[..., None])
    return torch.matmul(probs_BHLS, v_BHSD.float()).to(q_BHLD.dtype), lse_BHL


def attention_with_lse(
    q_BLHD: torch.Tensor, k_BSHD: torch.Tensor, v_BSHD: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention (scale 1/sqrt(Dh), no mask) -> (o_BLHD in q's dtype, lse_BHL in fp32)."""
    q, k, v = (t.transpose(1, 2) for t in (q_BLHD, k_BSHD, v_BSHD))  # [B, H, *, Dh]
    if q.device.type == "cpu":
        o_BHLD, lse_BHL = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v)
    elif q.device.type == "cuda" and q.dtype in _FLASH_CUDA_DTYPES:
        try:
            o_BHLD, lse_BHL = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, False, False)[:2]
        except RuntimeError:  # head dim or GPU arch the flash kernel rejects
            o_BHLD, lse_BHL = _math_attention_lse(q, k, v)
    else:
        o_BHLD, lse_BHL = _math_attention_lse(q, k, v)
    return o_BHLD.transpose(1, 2), lse_BHL.float()


class LseAccumulator:
    """Running fp32 merge of ``(o_BLHD, lse_BHL)`` partials over disjoint key blocks."""

    def __init__(self) -> None:
        self.o_BLHD: torch.Tensor | None = None
        self.lse_BHL: torch.Tensor | None = None

    def add(self, o_BLHD: torch.Tensor, lse_BHL: torch.Tensor) -> None:
        if self.o_BLHD is None or self.lse_BHL is None:
            self.o_BLHD, self.lse_BHL = o_BLHD.float(), lse_BHL
            return
        new_lse_BHL = torch.logaddexp(self.lse_BHL, lse_BHL)
        # weights per (b, h, l) broadcast over Dh: [B, H, L] -> [B, L, H, 1]
        old_w = torch.exp(self.lse_BHL - new_lse_BHL).transpose(1, 2)[..., None]
        new_w = torch.exp(lse_BHL - new_lse_BHL).transpose(1, 2)[..., None]
        self.o_BLHD = self.o_BLHD * old_w + o_BLHD.float() * new_w
        self.lse_BHL = new_lse_BHL

    def result(self, dtype: torch.dtype) -> torch.Tensor:
        if self.o_BLHD is None:
            raise ValueError("no key block had a real token: the sequence is empty")
        return self.o_BLHD.to(dtype)
