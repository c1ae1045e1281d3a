"""Exact matmul FLOPs of one GEN3C DiT forward, for a ModelConfig and a latent shape.

Counted: every matrix product of :mod:`gen3c_dist.model.dit` at 2 FLOPs per multiply-accumulate, which is what
``torch.utils.flop_counter.FlopCounterMode`` counts (mm, bmm, SDPA) and what MFU conventionally divides by:

* patch embedding ``Linear(82 * pt * ps * ps -> D)`` on every token;
* the timestep MLP ``Linear(D -> D)``, ``Linear(D -> 3D)`` once per sample;
* adaLN-LoRA ``Linear(D -> r)``, ``Linear(r -> k D)`` per sub-block (k = 3) and in the final layer (k = 2),
  once per sample (they act on the timestep embedding, not on tokens);
* self-attention Q, K, V and output projections, and its core ``Q K^T`` plus ``P V`` (``4 S^2 D``);
* cross-attention Q and output projections on video tokens, K and V on the ``text_tokens`` text tokens of
  width ``crossattn_emb_channels``, and its core (``4 S Lc D``);
* the non-gated GELU MLP ``D -> mlp_ratio D -> D``;
* the final ``Linear(D -> pt ps ps 16)``.

Not counted (as in FlopCounterMode): element-wise work (LayerNorm, RMSNorm, RoPE, modulation, GELU, softmax,
residual adds). :mod:`gen3c_dist.perf.projection` models that as memory traffic instead.

Under context parallelism the total is unchanged: Ulysses runs every token against every token for a subset
of heads, the ring every local query against every key block. Padding added when the tokens do not divide
the CP degree is extra work that this count (the model's useful FLOPs) leaves out.
"""

from __future__ import annotations

import dataclasses

from gen3c_dist.config import ModelConfig
from gen3c_dist.shapes import CHUNK_FRAMES, dit_tokens, latent_thw

TEXT_TOKENS = 512  # T5 tokens per prompt in GEN3C (TextConfig.max_length)
# The shape helpers live in gen3c_dist.shapes; re-exported here for the tools that count with them.
__all__ = ["CHUNK_FRAMES", "DiTFlops", "TEXT_TOKENS", "dit_forward_flops", "dit_tokens", "latent_thw", "step_flops"]


@dataclasses.dataclass(frozen=True)
class DiTFlops:
    """FLOPs of one DiT forward by component (2 per multiply-accumulate)."""

    tokens: int
    patch_embed: int
    timestep_mlp: int
    adaln: int
    self_attn_proj: int
    self_attn_core: int
    cross_attn_proj: int
    cross_attn_core: int
    mlp: int
    final_linear: int

    @property
    def attention(self) -> int:
        """The two attention cores (``Q K^T`` and ``P V``), run by an attention kernel."""
        return self.self_attn_core + self.cross_attn_core

    @property
    def linear(self) -> int:
        """Everything run as a GEMM."""
        return self.total - self.attention

    @property
    def total(self) -> int:
        return sum(v for k, v in dataclasses.asdict(self).items() if k != "tokens")

    def as_dict(self) -> dict[str, int]:
        return {**dataclasses.asdict(self), "attention": self.attention, "linear": self.linear, "total": self.total}


def dit_forward_flops(
    model_cfg: ModelConfig, latent_THW: tuple[int, int, int], *, batch: int = 1, text_tokens: int = TEXT_TOKENS
) -> DiTFlops:
    """Exact FLOPs of ``GEN3CDiT.forward`` on a ``[batch, 16, T, H, W]`` latent with ``text_tokens`` text tokens."""
    if batch < 1 or text_tokens < 1:
        raise ValueError(f"batch={batch} and text_tokens={text_tokens} must be >= 1")
    S = dit_tokens(model_cfg, latent_THW)
    D, r, Ct = model_cfg.model_channels, model_cfg.adaln_lora_dim, model_cfg.crossattn_emb_channels
    hidden, blocks = int(D * model_cfg.mlp_ratio), model_cfg.num_blocks

    def matmul(rows: int, inner: int, cols: int) -> int:
        return 2 * batch * rows * inner * cols

    def adaln(chunks: int) -> int:
        return matmul(1, D, r) + matmul(1, r, chunks * D)

    return DiTFlops(
        tokens=S,
        patch_embed=matmul(S, model_cfg.patch_in_features, D),
        timestep_mlp=matmul(1, D, D) + matmul(1, D, 3 * D),
        adaln=blocks * 3 * adaln(3) + adaln(2),
        self_attn_proj=blocks * 4 * matmul(S, D, D),
        self_attn_core=blocks * 2 * matmul(S, D, S),  # Q K^T over all heads, then P V
        cross_attn_proj=blocks * (2 * matmul(S, D, D) + 2 * matmul(text_tokens, Ct, D)),
        cross_attn_core=blocks * 2 * matmul(S, D, text_tokens),
        mlp=blocks * (matmul(S, D, hidden) + matmul(S, hidden, D)),
        final_linear=matmul(S, D, model_cfg.patch_out_features),
    )


def step_flops(model_cfg: ModelConfig, latent_THW: tuple[int, int, int], *, forwards: int = 2) -> int:
    """FLOPs of one denoising step: ``forwards`` DiT forwards (2 with official guidance: cond and uncond)."""
    if forwards not in (1, 2):
        raise ValueError(f"forwards={forwards} per step must be 1 (cond only) or 2 (cond and uncond)")
    return forwards * dit_forward_flops(model_cfg, latent_THW).total
