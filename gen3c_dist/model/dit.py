"""The GEN3C network (official ``VideoExtendGeneralDIT`` on the Cosmos-1.0-7B DiT), single device.

Spec section 2. Module and parameter names equal the official ones minus the ``net.`` prefix, so a checkpoint
loads with a rename-free state dict. The forward pass is split into three public phases so that context
parallelism can act between them without touching this file:

    embed()      -> tokens [B, L, D] and a BlockContext (RoPE angles, pos-emb, modulation inputs), replicated
    run_blocks() -> the 28 FA-CA-MLP blocks; self-attention goes through the ``attn_op`` argument (the seam)
    unembed()    -> final layer and unpatchify to [B, 16, T, H, W]

Shape letters: B batch, C channels, T/H/W latent frames/rows/cols, L = tokens in (t h w) order, D model width,
Dh head dim, Lc text tokens, Ct text width.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from gen3c_dist.config import LATENT_CHANNELS, ModelConfig
from gen3c_dist.model.attention import AttentionOp, local_attention
from gen3c_dist.model.embeddings import (
    LearnablePosEmbAxis,
    RMSNorm,
    TimestepEmbedder,
    apply_rope,
    rope_angles,
)


@dataclasses.dataclass(frozen=True)
class BlockContext:
    """Everything the blocks need besides the tokens. Token-aligned fields are sharded together with x."""

    grid_THW: tuple[int, int, int]  # patch grid of the full (unsharded) sequence
    rope_LD: torch.Tensor  # [L, Dh] RoPE angles, fp32, token-aligned
    pos_emb_LD: torch.Tensor  # [L, D] normalised learnable pos-emb, token-aligned
    affline_BD: torch.Tensor  # [B, D] RMS-normalised timestep sinusoid (input of every adaLN)
    adaln_lora_B3D: torch.Tensor  # [B, 3D] t-embedder MLP output, the shared adaLN bias
    context_BLcCt: torch.Tensor  # [B, Lc, Ct] text embedding (cross-attention keys/values)


def adaln_modulation(dim: int, lora_dim: int, n_chunks: int) -> nn.Sequential:
    return nn.Sequential(nn.SiLU(), nn.Linear(dim, lora_dim, bias=False), nn.Linear(lora_dim, n_chunks * dim, bias=False))


class Attention(nn.Module):
    """Multi-head attention with per-head QK RMSNorm ("RRI"), no biases (spec section 2.6)."""

    def __init__(self, *, dim: int, context_dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.to_q = nn.Sequential(nn.Linear(dim, dim, bias=False), RMSNorm(head_dim))
        self.to_k = nn.Sequential(nn.Linear(context_dim, dim, bias=False), RMSNorm(head_dim))
        self.to_v = nn.Sequential(nn.Linear(context_dim, dim, bias=False), nn.Identity())
        self.to_out = nn.Sequential(nn.Linear(dim, dim, bias=False), nn.Identity())

    def _heads(self, x_BLD: torch.Tensor) -> torch.Tensor:
        B, L, D = x_BLD.shape
        return x_BLD.view(B, L, self.num_heads, D // self.num_heads)  # [B, L, H, Dh]

    def forward(
        self,
        x_BLD: torch.Tensor,
        context_BLcC: torch.Tensor,
        *,
        rope_LD: torch.Tensor | None,
        attn_op: AttentionOp,
    ) -> torch.Tensor:
        q = self.to_q[1](self._heads(self.to_q[0](x_BLD)))
        k = self.to_k[1](self._heads(self.to_k[0](context_BLcC)))
        v = self._heads(self.to_v[0](context_BLcC))
        if rope_LD is not None:  # self-attention only; applied after the QK norm (spec 2.5)
            q, k = apply_rope(q, rope_LD), apply_rope(k, rope_LD)
        o_BLHD = attn_op(q, k, v)
        return self.to_out(o_BLHD.flatten(2))


class AttentionBlock(nn.Module):
    """Holds ``attn`` so parameter names read ``block.attn.to_q...`` as in the checkpoint."""

    def __init__(self, *, dim: int, context_dim: int, num_heads: int) -> None:
        super().__init__()
        self.attn = Attention(dim=dim, context_dim=context_dim, num_heads=num_heads)


class FeedForward(nn.Module):
    """GPT-2 MLP with exact (erf) GELU, no biases."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.layer1 = nn.Linear(dim, hidden, bias=False)
        self.activation = nn.GELU()
        self.layer2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x_BLD: torch.Tensor) -> torch.Tensor:
        return self.layer2(self.activation(self.layer1(x_BLD)))


class SubBlock(nn.Module):
    """``x + gate * f(LN(x) * (1 + scale) + shift)`` for f in self-attn, cross-attn or MLP."""

    def __init__(self, kind: str, cfg: ModelConfig) -> None:
        super().__init__()
        dim = cfg.model_channels
        self.kind = kind
        self.norm_state = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        if kind == "mlp":
            self.block: nn.Module = FeedForward(dim, int(dim * cfg.mlp_ratio))
        else:
            context_dim = dim if kind == "self_attn" else cfg.crossattn_emb_channels
            self.block = AttentionBlock(dim=dim, context_dim=context_dim, num_heads=cfg.num_heads)
        self.adaLN_modulation = adaln_modulation(dim, cfg.adaln_lora_dim, 3)

    def forward(self, x_BLD: torch.Tensor, ctx: BlockContext, attn_op: AttentionOp) -> torch.Tensor:
        modulation_B3D = self.adaLN_modulation(ctx.affline_BD) + ctx.adaln_lora_B3D
        shift_B1D, scale_B1D, gate_B1D = modulation_B3D[:, None, :].chunk(3, dim=-1)
        h_BLD = self.norm_state(x_BLD) * (1 + scale_B1D) + shift_B1D
        if self.kind == "self_attn":
            h_BLD = self.block.attn(h_BLD, h_BLD, rope_LD=ctx.rope_LD, attn_op=attn_op)
        elif self.kind == "cross_attn":
            h_BLD = self.block.attn(h_BLD, ctx.context_BLcCt, rope_LD=None, attn_op=local_attention)
        else:
            h_BLD = self.block(h_BLD)
        return x_BLD + gate_B1D * h_BLD


class TransformerBlock(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(SubBlock(kind, cfg) for kind in ("self_attn", "cross_attn", "mlp"))

    def forward(self, x_BLD: torch.Tensor, ctx: BlockContext, attn_op: AttentionOp) -> torch.Tensor:
        x_BLD = x_BLD + ctx.pos_emb_LD.to(x_BLD.dtype)  # before every block, not once (spec 2.5)
        for sub in self.blocks:
            x_BLD = sub(x_BLD, ctx, attn_op)
        return x_BLD


class PatchEmbed(nn.Module):
    """``b c (t r) (h m) (w n) -> b t h w (c r m n)``: channel outermost (spec 2.3), then a bias-free Linear."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.pt, self.ps = cfg.patch_temporal, cfg.patch_spatial
        self.proj = nn.Sequential(nn.Identity(), nn.Linear(cfg.patch_in_features, cfg.model_channels, bias=False))

    def forward(self, x_BCTHW: torch.Tensor) -> torch.Tensor:
        B, C, T, H, W = x_BCTHW.shape
        pt, ps = self.pt, self.ps
        x = x_BCTHW.reshape(B, C, T // pt, pt, H // ps, ps, W // ps, ps)
        x = x.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(B, T // pt, H // ps, W // ps, C * pt * ps * ps)
        return self.proj[1](x)  # [B, T', H', W', D]


class FinalLayer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        dim = cfg.model_channels
        self.norm_final = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, cfg.patch_out_features, bias=False)
        self.adaLN_modulation = adaln_modulation(dim, cfg.adaln_lora_dim, 2)

    def forward(self, x_BLD: torch.Tensor, affline_BD: torch.Tensor, adaln_lora_B3D: torch.Tensor) -> torch.Tensor:
        dim = x_BLD.shape[-1]
        modulation_B2D = self.adaLN_modulation(affline_BD) + adaln_lora_B3D[:, : 2 * dim]
        shift_B1D, scale_B1D = modulation_B2D[:, None, :].chunk(2, dim=-1)
        return self.linear(self.norm_final(x_BLD) * (1 + scale_B1D) + shift_B1D)  # [B, L, ps*ps*pt*C]


class GEN3CDiT(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        ps, pt, dim = cfg.patch_spatial, cfg.patch_temporal, cfg.model_channels
        self.x_embedder = PatchEmbed(cfg)
        self.extra_pos_embedder = LearnablePosEmbAxis(
            dim=dim, len_t=cfg.max_frames // pt, len_h=cfg.max_img_h // ps, len_w=cfg.max_img_w // ps
        )
        self.t_embedder = TimestepEmbedder(dim)
        self.affline_norm = RMSNorm(dim)
        self.blocks = nn.ModuleDict({f"block{i}": TransformerBlock(cfg) for i in range(cfg.num_blocks)})
        self.final_layer = FinalLayer(cfg)

    # ---- phase 1 -------------------------------------------------------------------------------------------
    def assemble_input(
        self,
        x_BCTHW: torch.Tensor,
        *,
        condition_video_input_mask_B1THW: torch.Tensor,
        condition_video_pose_BCTHW: torch.Tensor,
        padding_mask_B1HW: torch.Tensor,
    ) -> torch.Tensor:
        """The 82-channel input in the official order (spec 2.2, fact 2)."""
        B, C, T, H, W = x_BCTHW.shape
        pose_channels = 2 * LATENT_CHANNELS * self.cfg.frame_buffer_max
        if C != LATENT_CHANNELS or condition_video_pose_BCTHW.shape != (B, pose_channels, T, H, W):
            raise ValueError(
                f"DiT inputs: x {tuple(x_BCTHW.shape)} needs 16 channels and condition_video_pose "
                f"{tuple(condition_video_pose_BCTHW.shape)} needs shape {(B, pose_channels, T, H, W)}"
            )
        if condition_video_input_mask_B1THW.shape != (B, 1, T, H, W):
            raise ValueError(f"condition_video_input_mask {tuple(condition_video_input_mask_B1THW.shape)} != {(B, 1, T, H, W)}")
        if T % self.cfg.patch_temporal or H % self.cfg.patch_spatial or W % self.cfg.patch_spatial:
            raise ValueError(f"latent grid {(T, H, W)} is not divisible by the patch size")
        if padding_mask_B1HW.shape[-2:] != (H, W):  # the official nearest resize to the latent grid
            padding_mask_B1HW = F.interpolate(padding_mask_B1HW.float(), size=(H, W), mode="nearest")
        padding_B1THW = padding_mask_B1HW.to(x_BCTHW.dtype)[:, :, None].expand(B, 1, T, H, W)
        parts = [x_BCTHW, condition_video_input_mask_B1THW, condition_video_pose_BCTHW, padding_B1THW]
        return torch.cat([p.to(x_BCTHW.dtype) for p in parts], dim=1)

    def embed(
        self,
        x_BCTHW: torch.Tensor,
        timesteps_B: torch.Tensor,
        crossattn_emb_BLcCt: torch.Tensor,
        *,
        condition_video_input_mask_B1THW: torch.Tensor,
        condition_video_pose_BCTHW: torch.Tensor,
        padding_mask_B1HW: torch.Tensor,
        fps: float | None = None,
    ) -> tuple[torch.Tensor, BlockContext]:
        dtype = self.x_embedder.proj[1].weight.dtype
        x_in = self.assemble_input(
            x_BCTHW.to(dtype),
            condition_video_input_mask_B1THW=condition_video_input_mask_B1THW,
            condition_video_pose_BCTHW=condition_video_pose_BCTHW,
            padding_mask_B1HW=padding_mask_B1HW,
        )
        x_BThwD = self.x_embedder(x_in)
        B, T, H, W, D = x_BThwD.shape
        # The official pipeline casts c_noise to the model dtype before the call (spec 2.4).
        sinusoid_BD, adaln_lora_B3D = self.t_embedder(timesteps_B.reshape(-1).to(dtype))
        cfg = self.cfg
        ctx = BlockContext(
            grid_THW=(T, H, W),
            rope_LD=rope_angles(
                (T, H, W),
                head_dim=cfg.head_dim,
                fps=fps,
                extrapolation_thw=(cfg.rope_t_extrapolation_ratio, cfg.rope_h_extrapolation_ratio, cfg.rope_w_extrapolation_ratio),
                device=x_BThwD.device,
            ),
            pos_emb_LD=self.extra_pos_embedder((T, H, W)),
            affline_BD=self.affline_norm(sinusoid_BD),
            adaln_lora_B3D=adaln_lora_B3D,
            context_BLcCt=crossattn_emb_BLcCt.to(dtype),
        )
        return x_BThwD.reshape(B, T * H * W, D), ctx

    # ---- phase 2 -------------------------------------------------------------------------------------------
    def run_blocks(self, x_BLD: torch.Tensor, ctx: BlockContext, *, attn_op: AttentionOp = local_attention) -> torch.Tensor:
        for block in self.blocks.values():
            x_BLD = block(x_BLD, ctx, attn_op)
        return x_BLD

    # ---- phase 3 -------------------------------------------------------------------------------------------
    def unembed(self, x_BLD: torch.Tensor, ctx: BlockContext) -> torch.Tensor:
        tokens_BLP = self.final_layer(x_BLD, ctx.affline_BD, ctx.adaln_lora_B3D)
        return self.unpatchify(tokens_BLP, ctx.grid_THW)

    def unpatchify(self, tokens_BLP: torch.Tensor, grid_THW: tuple[int, int, int]) -> torch.Tensor:
        """``(p1 p2 t C)`` feature order, channel innermost: the opposite of the patch embed (spec 2.7)."""
        T, H, W = grid_THW
        B = tokens_BLP.shape[0]
        ps, pt, C = self.cfg.patch_spatial, self.cfg.patch_temporal, self.cfg.out_channels
        x = tokens_BLP.reshape(B, T, H, W, ps, ps, pt, C)
        return x.permute(0, 7, 1, 6, 2, 4, 3, 5).reshape(B, C, T * pt, H * ps, W * ps)

    def forward(
        self,
        x_BCTHW: torch.Tensor,
        timesteps_B: torch.Tensor,
        crossattn_emb_BLcCt: torch.Tensor,
        *,
        condition_video_input_mask_B1THW: torch.Tensor,
        condition_video_pose_BCTHW: torch.Tensor,
        padding_mask_B1HW: torch.Tensor,
        fps: float | None = None,
        attn_op: AttentionOp = local_attention,
    ) -> torch.Tensor:
        """Raw network output ``F`` [B, 16, T, H, W]; EDM preconditioning happens outside (spec 4.1)."""
        x_BLD, ctx = self.embed(
            x_BCTHW,
            timesteps_B,
            crossattn_emb_BLcCt,
            condition_video_input_mask_B1THW=condition_video_input_mask_B1THW,
            condition_video_pose_BCTHW=condition_video_pose_BCTHW,
            padding_mask_B1HW=padding_mask_B1HW,
            fps=fps,
        )
        return self.unembed(self.run_blocks(x_BLD, ctx, attn_op=attn_op), ctx)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
