"""Composite blocks shared by the encoder and the decoder: resolution levels and the mid block.

Attribute names give the released keys: ``block.{j}``, ``attn.{j}``, ``downsample`` / ``upsample``, and
``block_1``, ``attn_1``, ``block_2`` for the mid block.
"""

from __future__ import annotations

import torch
from torch import nn

from gen3c_dist.model.tokenizer.attention import spatio_temporal_attention
from gen3c_dist.model.tokenizer.layers import HybridDownsample, HybridUpsample, ResnetBlock


class _LevelBlocks(nn.Module):
    """``num_blocks`` resnet blocks, each followed by attention when the level's resolution asks for it."""

    def __init__(self, chan_in: int, chan_out: int, num_blocks: int, with_attention: bool) -> None:
        super().__init__()
        self.block = nn.ModuleList(ResnetBlock(chan_in if j == 0 else chan_out, chan_out) for j in range(num_blocks))
        n_attn = num_blocks if with_attention else 0  # an empty list has no keys (the released 720p case)
        self.attn = nn.ModuleList(spatio_temporal_attention(chan_out) for _ in range(n_attn))

    def run_blocks(self, x_BCTHW: torch.Tensor) -> torch.Tensor:
        for j, block in enumerate(self.block):
            x_BCTHW = block(x_BCTHW)
            if len(self.attn):
                x_BCTHW = self.attn[j](x_BCTHW)
        return x_BCTHW


class DownLevel(_LevelBlocks):
    """Encoder level: blocks, then ``downsample`` (absent on the last level)."""

    def __init__(self, chan_in: int, chan_out: int, num_blocks: int, with_attention: bool,
                 downsample: HybridDownsample | None) -> None:
        super().__init__(chan_in, chan_out, num_blocks, with_attention)
        self.downsample = downsample

    def forward(self, x_BCTHW: torch.Tensor) -> torch.Tensor:
        x_BCTHW = self.run_blocks(x_BCTHW)
        return x_BCTHW if self.downsample is None else self.downsample(x_BCTHW)


class UpLevel(_LevelBlocks):
    """Decoder level: blocks, then ``upsample`` (absent on level 0)."""

    def __init__(self, chan_in: int, chan_out: int, num_blocks: int, with_attention: bool,
                 upsample: HybridUpsample | None) -> None:
        super().__init__(chan_in, chan_out, num_blocks, with_attention)
        self.upsample = upsample

    def forward(self, x_BCTHW: torch.Tensor) -> torch.Tensor:
        x_BCTHW = self.run_blocks(x_BCTHW)
        return x_BCTHW if self.upsample is None else self.upsample(x_BCTHW)


class MidBlock(nn.Module):
    """Resnet, spatial + causal temporal attention, resnet at the lowest resolution (encoder and decoder)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels)
        self.attn_1 = spatio_temporal_attention(channels)
        self.block_2 = ResnetBlock(channels, channels)

    def forward(self, x_BCTHW: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x_BCTHW)))
