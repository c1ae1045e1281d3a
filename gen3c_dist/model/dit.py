"""The GEN3C network (official ``VideoExtendGeneralDIT`` on the Cosmos-1.0-7B DiT), single device.

Spec section 2. Module and parameter names equal the official ones minus the ``net.`` prefix, so a checkpoint
loads with a rename-free state dict. The forward pass is split into public phases, so that a caller can run
them on part of the sequence (a run of tokens) without touching this file:

    token_positions() -> RoPE cos/sin and pos-emb for a run of tokens: they depend only on the latent grid and
                         fps, so a caller builds them once per chunk and passes them to every forward
    patch_tokens()    -> the 82-channel input patchified to [B, L, 82 * pt * ps * ps] (no weights yet)
    embed_tokens() and block_context() -> tokens [B, l, D] and the per-call BlockContext (modulation inputs)
    run_blocks()      -> the 28 FA-CA-MLP blocks; self-attention goes through the ``attn_op`` argument (the seam)
    unembed()         -> final layer and unpatchify to [B, 16, T, H, W]

Shape letters: B batch, C channels, T/H/W latent frames/rows/cols, L = tokens in (t h w) order, D model width,
Dh head dim, Lc text tokens, Ct text width.
"""

from __future__ import annotations

import dataclasses

import einops
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
    rope_cos_sin,
)


@dataclasses.dataclass(frozen=True)
class TokenPositions:
    """What a token's place in the latent grid decides, aligned with the tokens a caller holds (all, or a run).

    It depends on the patch grid and fps only, which a chunk's 70 forwards share: build it once per chunk.
    """

    grid_THW: tuple[int, int, int]  # patch grid of the whole sequence, also when the tables cover a run of it
    rope_cos_LD: torch.Tensor  # [L, Dh] cos of the RoPE angles, in the activation dtype
    rope_sin_LD: torch.Tensor  # [L, Dh] sin of the RoPE angles, in the activation dtype
    pos_emb_LD: torch.Tensor  # [L, D] normalised learnable pos-emb


@dataclasses.dataclass(frozen=True)
class BlockContext:
    """Everything the blocks need besides the tokens: the positions (per chunk) and this call's conditioning."""

    positions: TokenPositions
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
        positions: TokenPositions | None,
        attn_op: AttentionOp,
    ) -> torch.Tensor:
        q = self.to_q[1](self._heads(self.to_q[0](x_BLD)))
        k = self.to_k[1](self._heads(self.to_k[0](context_BLcC)))
        v = self._heads(self.to_v[0](context_BLcC))
        if positions is not None:  # self-attention only; applied after the QK norm (spec 2.5)
            cos_LD, sin_LD = positions.rope_cos_LD, positions.rope_sin_LD
            q, k = apply_rope(q, cos_LD, sin_LD), apply_rope(k, cos_LD, sin_LD)
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
            h_BLD = self.block.attn(h_BLD, h_BLD, positions=ctx.positions, attn_op=attn_op)
        elif self.kind == "cross_attn":
            h_BLD = self.block.attn(h_BLD, ctx.context_BLcCt, positions=None, attn_op=local_attention)
        else:
            h_BLD = self.block(h_BLD)
        return x_BLD + gate_B1D * h_BLD


class TransformerBlock(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(SubBlock(kind, cfg) for kind in ("self_attn", "cross_attn", "mlp"))

    def forward(self, x_BLD: torch.Tensor, ctx: BlockContext, attn_op: AttentionOp) -> torch.Tensor:
        x_BLD = x_BLD + ctx.positions.pos_emb_LD.to(x_BLD.dtype)  # before every block, not once (spec 2.5)
        for sub in self.blocks:
            x_BLD = sub(x_BLD, ctx, attn_op)
        return x_BLD


class PatchEmbed(nn.Module):
    """Patchify with the channel outermost (spec 2.3), then a bias-free Linear; index 0 of ``proj`` has no weights."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.pt, self.ps = cfg.patch_temporal, cfg.patch_spatial
        self.proj = nn.Sequential(nn.Identity(), nn.Linear(cfg.patch_in_features, cfg.model_channels, bias=False))

    def patchify(self, x_BCTHW: torch.Tensor) -> torch.Tensor:
        """``[B, C, T, H, W] -> [B, L, C * pt * ps * ps]``, tokens in (t h w) order."""
        pattern = "b c (t r) (h m) (w n) -> b (t h w) (c r m n)"
        return einops.rearrange(x_BCTHW, pattern, r=self.pt, m=self.ps, n=self.ps)

    def forward(self, patches_BLP: torch.Tensor) -> torch.Tensor:
        return self.proj[1](patches_BLP)  # [B, L, D]; per token, so any run of tokens embeds alone


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

    @property
    def compute_dtype(self) -> torch.dtype:
        """The weights' dtype, which every activation of the forward shares."""
        return self.x_embedder.proj[1].weight.dtype

    def patch_grid(self, latent_THW: tuple[int, int, int]) -> tuple[int, int, int]:
        """The token grid of a latent grid; ValueError when the patch size does not divide it."""
        T, H, W = latent_THW
        pt, ps = self.cfg.patch_temporal, self.cfg.patch_spatial
        if T % pt or H % ps or W % ps:
            raise ValueError(f"latent grid {(T, H, W)} is not divisible by the patch size")
        return T // pt, H // ps, W // ps

    # ---- positions: once per latent grid and fps -----------------------------------------------------------
    def rope_angles(
        self, grid_THW: tuple[int, int, int], *, fps: float | None, tokens: slice | None = None,
        device: torch.device | None = None,
    ) -> torch.Tensor:
        """The 3D RoPE angles ``[l, Dh]`` (fp32) of the tokens ``tokens`` (default all) of the sequence."""
        cfg = self.cfg
        extrapolation = (cfg.rope_t_extrapolation_ratio, cfg.rope_h_extrapolation_ratio, cfg.rope_w_extrapolation_ratio)
        return rope_angles(grid_THW, head_dim=cfg.head_dim, fps=fps, extrapolation_thw=extrapolation,
                           device=device, tokens=tokens)

    def token_positions(
        self, grid_THW: tuple[int, int, int], *, fps: float | None, tokens: slice | None = None,
        device: torch.device | None = None,
    ) -> TokenPositions:
        """RoPE cos/sin and pos-emb of the tokens ``tokens`` (default all), equal to those rows of the whole tables."""
        angles_lD = self.rope_angles(grid_THW, fps=fps, tokens=tokens, device=device)
        cos_lD, sin_lD = rope_cos_sin(angles_lD, self.compute_dtype)
        return TokenPositions(grid_THW, cos_lD, sin_lD, self.extra_pos_embedder(grid_THW, tokens))

    # ---- phase 1: embed ------------------------------------------------------------------------------------
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
        self.patch_grid((T, H, W))  # ValueError unless the patch size divides the grid
        if padding_mask_B1HW.shape[-2:] != (H, W):  # the official nearest resize to the latent grid
            padding_mask_B1HW = F.interpolate(padding_mask_B1HW.float(), size=(H, W), mode="nearest")
        padding_B1THW = padding_mask_B1HW.to(x_BCTHW.dtype)[:, :, None].expand(B, 1, T, H, W)
        parts = [x_BCTHW, condition_video_input_mask_B1THW, condition_video_pose_BCTHW, padding_B1THW]
        return torch.cat([p.to(x_BCTHW.dtype) for p in parts], dim=1)

    def patch_tokens(
        self,
        x_BCTHW: torch.Tensor,
        *,
        condition_video_input_mask_B1THW: torch.Tensor,
        condition_video_pose_BCTHW: torch.Tensor,
        padding_mask_B1HW: torch.Tensor,
    ) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """The assembled input patchified, ``[B, L, 82 * pt * ps * ps]``, and its token grid (T', H', W')."""
        x_in_BCTHW = self.assemble_input(
            x_BCTHW.to(self.compute_dtype),
            condition_video_input_mask_B1THW=condition_video_input_mask_B1THW,
            condition_video_pose_BCTHW=condition_video_pose_BCTHW,
            padding_mask_B1HW=padding_mask_B1HW,
        )
        return self.x_embedder.patchify(x_in_BCTHW), self.patch_grid(tuple(x_BCTHW.shape[-3:]))

    def embed_tokens(self, patches_BLP: torch.Tensor) -> torch.Tensor:
        """The patch embedding ``[B, l, P] -> [B, l, D]``: per token, so it embeds any run of tokens alone."""
        return self.x_embedder(patches_BLP)

    def block_context(
        self, timesteps_B: torch.Tensor, crossattn_emb_BLcCt: torch.Tensor, positions: TokenPositions
    ) -> BlockContext:
        """This call's conditioning (timestep modulation inputs, text) beside the chunk's positions."""
        dtype = self.compute_dtype
        # The official pipeline casts c_noise to the model dtype before the call (spec 2.4).
        sinusoid_BD, adaln_lora_B3D = self.t_embedder(timesteps_B.reshape(-1).to(dtype))
        return BlockContext(
            positions=positions,
            affline_BD=self.affline_norm(sinusoid_BD),
            adaln_lora_B3D=adaln_lora_B3D,
            context_BLcCt=crossattn_emb_BLcCt.to(dtype),
        )

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
        positions: TokenPositions | None = None,
    ) -> tuple[torch.Tensor, BlockContext]:
        """Tokens ``[B, L, D]`` and the BlockContext; ``positions`` (all L tokens, this grid and fps) are reused."""
        patches_BLP, grid_THW = self.patch_tokens(
            x_BCTHW,
            condition_video_input_mask_B1THW=condition_video_input_mask_B1THW,
            condition_video_pose_BCTHW=condition_video_pose_BCTHW,
            padding_mask_B1HW=padding_mask_B1HW,
        )
        if positions is None:
            positions = self.token_positions(grid_THW, fps=fps, device=x_BCTHW.device)
        elif positions.grid_THW != grid_THW or positions.pos_emb_LD.shape[0] != patches_BLP.shape[1]:
            raise ValueError(
                f"positions hold {positions.pos_emb_LD.shape[0]} tokens of grid {positions.grid_THW}, but the input "
                f"has all {patches_BLP.shape[1]} tokens of grid {grid_THW}"
            )
        return self.embed_tokens(patches_BLP), self.block_context(timesteps_B, crossattn_emb_BLcCt, positions)

    # ---- phase 2 -------------------------------------------------------------------------------------------
    def run_blocks(self, x_BLD: torch.Tensor, ctx: BlockContext, *, attn_op: AttentionOp = local_attention) -> torch.Tensor:
        for block in self.blocks.values():
            x_BLD = block(x_BLD, ctx, attn_op)
        return x_BLD

    # ---- phase 3 -------------------------------------------------------------------------------------------
    def unembed(self, x_BLD: torch.Tensor, ctx: BlockContext) -> torch.Tensor:
        tokens_BLP = self.final_layer(x_BLD, ctx.affline_BD, ctx.adaln_lora_B3D)
        return self.unpatchify(tokens_BLP, ctx.positions.grid_THW)

    def unpatchify(self, tokens_BLP: torch.Tensor, grid_THW: tuple[int, int, int]) -> torch.Tensor:
        """``(p1 p2 t C)`` feature order, channel innermost: the opposite of the patch embed (spec 2.7)."""
        T, H, W = grid_THW
        ps, pt = self.cfg.patch_spatial, self.cfg.patch_temporal
        return einops.rearrange(
            tokens_BLP, "b (T H W) (p1 p2 t c) -> b c (T t) (H p1) (W p2)", T=T, H=H, W=W, p1=ps, p2=ps, t=pt
        )

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
        positions: TokenPositions | None = None,
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
            positions=positions,
        )
        return self.unembed(self.run_blocks(x_BLD, ctx, attn_op=attn_op), ctx)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
