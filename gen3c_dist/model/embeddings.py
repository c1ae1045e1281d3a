"""Timestep and positional embeddings of the GEN3C DiT (spec sections 2.4 and 2.5).

Shape letters: B batch, T/H/W latent grid after patchify, L = T*H*W tokens in (t h w) order, D model width,
Dh head dim.
"""

from __future__ import annotations

import math

import torch
from torch import nn

BASE_FPS = 24.0


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x^2) + eps) * weight`` (TransformerEngine semantics), computed in fp32."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        y = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).to(x.dtype)


def timestep_sinusoid(timesteps_B: torch.Tensor, dim: int) -> torch.Tensor:
    """``[cos(t f), sin(t f)]`` with ``f_k = exp(-ln(1e4) k / (dim/2))``, cos first; computed in fp32."""
    half = dim // 2
    exponent = -math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=timesteps_B.device) / half
    angles_BK = timesteps_B.float()[:, None] * exponent.exp()[None, :]
    return torch.cat([torch.cos(angles_BK), torch.sin(angles_BK)], dim=-1).to(timesteps_B.dtype)


class TimestepEmbedding(nn.Module):
    """The t-embedder MLP. With AdaLN-LoRA its output is a shared bias for every modulation (spec 2.4)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(dim, dim, bias=False)
        self.activation = nn.SiLU()
        self.linear_2 = nn.Linear(dim, 3 * dim, bias=False)

    def forward(self, sinusoid_BD: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.activation(self.linear_1(sinusoid_BD)))  # [B, 3D]


class TimestepEmbedder(nn.Sequential):
    """Index 0 holds no weights; index 1 is the MLP, so keys read ``t_embedder.1.linear_*`` as in the checkpoint."""

    def __init__(self, dim: int) -> None:
        super().__init__(nn.Identity(), TimestepEmbedding(dim))
        self.dim = dim

    def forward(self, timesteps_B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sinusoid_BD = timestep_sinusoid(timesteps_B, self.dim)
        return sinusoid_BD, self[1](sinusoid_BD)


def rope_split(head_dim: int) -> tuple[int, int, int]:
    """(dim_t, dim_h, dim_w) of the 3D RoPE: h and w get ``head_dim // 6 * 2`` each, t the rest."""
    dim_h = head_dim // 6 * 2
    return head_dim - 2 * dim_h, dim_h, dim_h


def token_axes(
    grid_THW: tuple[int, int, int], tokens: slice | None = None, *, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(t, h, w) grid coordinates of the tokens ``tokens`` (default all) of the (t h w)-ordered sequence, each [l]."""
    T, H, W = grid_THW
    start, stop, step = (tokens or slice(None)).indices(T * H * W)
    if step != 1:
        raise ValueError(f"token range {tokens} must be contiguous (step 1)")
    index_l = torch.arange(start, stop, device=device)
    return index_l // (H * W), index_l // W % H, index_l % W


def rope_angles(
    grid_THW: tuple[int, int, int],
    *,
    head_dim: int,
    fps: float | None,
    extrapolation_thw: tuple[float, float, float],
    device: torch.device | None = None,
    tokens: slice | None = None,
) -> torch.Tensor:
    """RoPE angles per token, ``[l, Dh]`` in fp32, laid out ``[t, h, w, t, h, w]`` (rotate-half pairing).

    ``tokens`` picks a contiguous run of the (t h w) sequence (default: all ``L`` tokens); a row depends only on
    its token's grid position, so a run equals the same rows of the whole table, bit for bit. The temporal base
    is NTK-scaled: ``theta_t = 1e4 * r_t ** (dim_t / (dim_t - 2))`` (spec section 2.5), and temporal positions
    are rescaled by ``24 / fps`` when an fps is given.
    """
    T, H, W = grid_THW
    dim_t, dim_h, dim_w = rope_split(head_dim)

    def inverse_freqs(dim: int, ratio: float) -> torch.Tensor:
        theta = 10000.0 * ratio ** (dim / (dim - 2))
        exponents = torch.arange(0, dim, 2, dtype=torch.float32, device=device)[: dim // 2] / dim
        return 1.0 / (theta**exponents)

    t_pos = torch.arange(T, dtype=torch.float32, device=device)
    if fps is not None:
        t_pos = t_pos / fps * BASE_FPS
    half_t = torch.outer(t_pos, inverse_freqs(dim_t, extrapolation_thw[0]))  # [T, dim_t/2]
    half_h = torch.outer(torch.arange(H, dtype=torch.float32, device=device), inverse_freqs(dim_h, extrapolation_thw[1]))
    half_w = torch.outer(torch.arange(W, dtype=torch.float32, device=device), inverse_freqs(dim_w, extrapolation_thw[2]))
    t_l, h_l, w_l = token_axes(grid_THW, tokens, device=device)
    return torch.cat([half_t[t_l], half_h[h_l], half_w[w_l]] * 2, dim=-1)  # [l, Dh]


def rope_cos_sin(angles_LD: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos`` and ``sin`` of the angles in the activation dtype: computed once, used by every attention call."""
    return torch.cos(angles_LD).to(dtype), torch.sin(angles_LD).to(dtype)


def apply_rope(x_BLHD: torch.Tensor, cos_LD: torch.Tensor, sin_LD: torch.Tensor) -> torch.Tensor:
    """``x cos + rotate_half(x) sin`` where rotate_half pairs dim i with i + Dh/2 (TE convention, spec 2.5)."""
    x1, x2 = x_BLHD.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return x_BLHD * cos_LD[:, None, :] + rotated * sin_LD[:, None, :]  # [L, 1, Dh] broadcast over heads


class LearnablePosEmbAxis(nn.Module):
    """Per-axis learnable tables summed and RMS-normalised; added before every block (spec section 2.5)."""

    def __init__(self, *, dim: int, len_t: int, len_h: int, len_w: int) -> None:
        super().__init__()
        self.pos_emb_t = nn.Parameter(torch.zeros(len_t, dim))
        self.pos_emb_h = nn.Parameter(torch.zeros(len_h, dim))
        self.pos_emb_w = nn.Parameter(torch.zeros(len_w, dim))

    def forward(self, grid_THW: tuple[int, int, int], tokens: slice | None = None) -> torch.Tensor:
        """``[l, D]`` for the tokens ``tokens`` (default all); a run equals those rows of the whole table."""
        T, H, W = grid_THW
        if T > self.pos_emb_t.shape[0] or H > self.pos_emb_h.shape[0] or W > self.pos_emb_w.shape[0]:
            raise ValueError(
                f"latent grid (T, H, W)={grid_THW} after patchify exceeds the position tables "
                f"({self.pos_emb_t.shape[0]}, {self.pos_emb_h.shape[0]}, {self.pos_emb_w.shape[0]}); "
                "raise model.max_frames / max_img_h / max_img_w"
            )
        t_l, h_l, w_l = token_axes(grid_THW, tokens, device=self.pos_emb_t.device)
        emb_lD = self.pos_emb_t[t_l] + self.pos_emb_h[h_l] + self.pos_emb_w[w_l]
        norm_l1 = torch.linalg.vector_norm(emb_lD, dim=-1, keepdim=True, dtype=torch.float32)
        norm_l1 = norm_l1 / math.sqrt(emb_lD.shape[-1]) + 1e-6
        return emb_lD / norm_l1.to(emb_lD.dtype)
