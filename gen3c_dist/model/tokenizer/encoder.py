"""Native encoder of the Cosmos CV8x8x8 tokenizer: ``encoder.*`` + ``quant_conv.*`` as in ``encoder.jit``.

Pipeline (official ``EncoderFactorized``): Haar patcher (x4 in T/H/W), factorized conv_in, one level per
``channels_mult`` entry (resnet blocks, optional attention, hybrid downsample except on the last level), mid block,
GroupNorm + SiLU + factorized conv_out, then the 1x1x1 ``quant_conv``. The AE formulation returns the latent as is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gen3c_dist.model.tokenizer.blocks import DownLevel, MidBlock
from gen3c_dist.model.tokenizer.config import TokenizerNetworkConfig
from gen3c_dist.model.tokenizer.layers import CausalGroupNorm, HybridDownsample, factorized_conv, pointwise_conv
from gen3c_dist.model.tokenizer.patching import HaarPatcher3D


class FactorizedEncoder(nn.Module):
    """(B, 3, T, H, W) in [-1, 1] -> (B, z_channels*z_factor, 1 + (T-1)/8, H/8, W/8) before ``quant_conv``."""

    def __init__(self, cfg: TokenizerNetworkConfig) -> None:
        super().__init__()
        self.patcher3d = HaarPatcher3D(cfg.patch_size)
        ch = cfg.channels
        self.conv_in = factorized_conv(cfg.patched_channels, ch)
        levels = len(cfg.channels_mult)
        in_mult = (1,) + cfg.channels_mult
        res = cfg.resolution // cfg.patch_size  # nominal resolution that selects attention levels (official)
        self.down = nn.ModuleList()
        for i in range(levels):
            chan_in, chan_out = ch * in_mult[i], ch * cfg.channels_mult[i]
            resample = None
            if i != levels - 1:
                # Hybrid downsampling in the first levels; later levels keep an empty (key-less) module.
                resample = HybridDownsample(chan_out, spatial=i < cfg.num_spatial_downs,
                                            temporal=i < cfg.num_temporal_downs)
            self.down.append(DownLevel(chan_in, chan_out, cfg.num_res_blocks, res in cfg.attn_resolutions, resample))
            if i != levels - 1:
                res //= 2
        top = ch * cfg.channels_mult[-1]
        self.mid = MidBlock(top)
        self.norm_out = CausalGroupNorm(top)
        self.conv_out = factorized_conv(top, cfg.z_channels * cfg.z_factor)

    def forward(self, x_BCTHW: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(self.patcher3d(x_BCTHW))
        for level in self.down:
            h = level(h)
        h = self.mid(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class VideoEncoder(nn.Module):
    """The module behind ``encoder.jit``: returns the raw latent (no mean/std normalisation)."""

    def __init__(self, cfg: TokenizerNetworkConfig) -> None:
        super().__init__()
        self.config = cfg
        self.encoder = FactorizedEncoder(cfg)
        self.quant_conv = pointwise_conv(cfg.z_channels * cfg.z_factor, cfg.latent_channels * cfg.z_factor)

    def forward(self, video_BCTHW: torch.Tensor) -> torch.Tensor:
        return self.quant_conv(self.encoder(video_BCTHW))
