"""Native decoder of the Cosmos CV8x8x8 tokenizer: ``post_quant_conv.*`` + ``decoder.*`` as in ``decoder.jit``.

Pipeline (official ``DecoderFactorized``): 1x1x1 ``post_quant_conv``, factorized conv_in, mid block, one level per
``channels_mult`` entry from the deepest up (``num_res_blocks + 1`` resnet blocks, optional attention, hybrid
upsample except on level 0), GroupNorm + SiLU + factorized conv_out to 3*p^3 channels, Haar unpatcher.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gen3c_dist.model.tokenizer.blocks import MidBlock, UpLevel
from gen3c_dist.model.tokenizer.config import TokenizerNetworkConfig
from gen3c_dist.model.tokenizer.layers import CausalGroupNorm, HybridUpsample, factorized_conv, pointwise_conv
from gen3c_dist.model.tokenizer.patching import HaarUnpatcher3D


def _upsample_flags(cfg: TokenizerNetworkConfig, level: int) -> tuple[bool, bool]:
    """(spatial, temporal) upsampling of decoder level ``level`` (official rule, ``legacy_mode`` included)."""
    reverse = len(cfg.channels_mult) - level - 1  # 0 = the deepest level, decoded first
    ups_t, ups_s = cfg.num_temporal_downs, cfg.num_spatial_downs
    temporal = reverse < ups_t if cfg.legacy_mode else 0 < reverse < ups_t + 1
    spatial = temporal or (reverse < ups_s and ups_s > ups_t)
    return spatial, temporal


class FactorizedDecoder(nn.Module):
    """(B, z_channels, Lt, h, w) -> (B, 3, 1 + 8*(Lt-1), 8h, 8w)."""

    def __init__(self, cfg: TokenizerNetworkConfig) -> None:
        super().__init__()
        self.unpatcher3d = HaarUnpatcher3D(cfg.patch_size)  # registered first: official key order
        levels = len(cfg.channels_mult)
        chan = cfg.channels * cfg.channels_mult[-1]
        res = (cfg.resolution // cfg.patch_size) // 2 ** (levels - 1)
        self.conv_in = factorized_conv(cfg.z_channels, chan)
        self.mid = MidBlock(chan)
        built: list[UpLevel] = []
        for i in reversed(range(levels)):  # deepest first; stored shallow-first so keys read up.{i}
            chan_out = cfg.channels * cfg.channels_mult[i]
            resample = HybridUpsample(chan_out, *_upsample_flags(cfg, i)) if i != 0 else None
            built.append(UpLevel(chan, chan_out, cfg.num_res_blocks + 1, res in cfg.attn_resolutions, resample))
            chan = chan_out
            if i != 0:
                res *= 2
        self.up = nn.ModuleList(reversed(built))
        self.norm_out = CausalGroupNorm(chan)
        self.conv_out = factorized_conv(chan, cfg.out_channels * cfg.patch_size**3)

    def forward(self, z_BCTHW: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z_BCTHW))
        for level in reversed(self.up):
            h = level(h)
        return self.unpatcher3d(self.conv_out(F.silu(self.norm_out(h))))


class VideoDecoder(nn.Module):
    """The module behind ``decoder.jit``: raw latent (already de-normalised) -> video in about [-1, 1]."""

    def __init__(self, cfg: TokenizerNetworkConfig) -> None:
        super().__init__()
        self.config = cfg
        self.post_quant_conv = pointwise_conv(cfg.latent_channels, cfg.z_channels)
        self.decoder = FactorizedDecoder(cfg)

    def forward(self, latent_BCTHW: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(latent_BCTHW))
