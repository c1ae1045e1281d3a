"""Building blocks of the Cosmos factorized causal video tokenizer.

Causality in time: every temporal kernel sees only the current and earlier frames, because the time axis is
padded at the front with copies of the first frame (never zeros) and never at the back. Space is zero padded.
Normalisation is GroupNorm(1) per frame (statistics over C, H, W of one frame), so no frame sees later ones.
Module and attribute names follow the official ``layers3d.py`` so ``state_dict()`` keys match the released files.

Sequence-parallel seam: :class:`CausalConv3d` and :class:`HybridUpsample` carry an optional per-instance hook
(``time_pad_hook``, ``time_upsample_hook``), ``None`` by default. A decoder that runs on one contiguous time slice
per rank sets them for the duration of a decode (``gen3c_dist.parallel.decode_parallel``) so the front padding
comes from the previous slices and only the slice holding global frame 0 drops its first copy. The hooks are plain
callables; this module never communicates.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

Kernel3 = tuple[int, int, int]


def prepend_first_frame(x_BCTHW: torch.Tensor, count: int) -> torch.Tensor:
    """Causal temporal padding: ``count`` copies of frame 0 in front of the video."""
    if count <= 0:
        return x_BCTHW
    return torch.cat([x_BCTHW[:, :, :1].expand(-1, -1, count, -1, -1), x_BCTHW], dim=2)


def avg_pool(x_BCTHW: torch.Tensor, kernel: Kernel3) -> torch.Tensor:
    """Non-overlapping average pool. CPU has no bf16/fp16 kernel: there it runs in float32 and rounds back,
    which is what the CUDA kernel does internally (float accumulation), so results agree across devices."""
    if x_BCTHW.device.type == "cpu" and x_BCTHW.dtype in (torch.bfloat16, torch.float16):
        return F.avg_pool3d(x_BCTHW.float(), kernel_size=kernel, stride=kernel).to(x_BCTHW.dtype)
    return F.avg_pool3d(x_BCTHW, kernel_size=kernel, stride=kernel)


class CausalConv3d(nn.Module):
    """Conv3d with replicate-first-frame temporal padding and symmetric zero spatial padding.

    The temporal pad is ``kt - time_stride`` frames (official ``time_pad``), so a stride-1 conv keeps T.
    """

    def __init__(self, chan_in: int, chan_out: int, kernel_size: Kernel3, *, padding: int = 0, stride: int = 1,
                 time_stride: int = 1) -> None:
        super().__init__()
        self.time_pad = kernel_size[0] - time_stride
        # Zero spatial padding is the conv's own padding: identical values to the official explicit F.pad.
        self.conv3d = nn.Conv3d(chan_in, chan_out, kernel_size, stride=(time_stride, stride, stride),
                                padding=(0, padding, padding))
        # (x, count) -> x with ``count`` frames of causal context in front; None: copies of frame 0.
        self.time_pad_hook: Optional[Callable[[torch.Tensor, int], torch.Tensor]] = None

    def forward(self, x_BCTHW: torch.Tensor) -> torch.Tensor:
        pad = prepend_first_frame if self.time_pad_hook is None else self.time_pad_hook
        return self.conv3d(pad(x_BCTHW, self.time_pad))


def factorized_conv(chan_in: int, chan_out: int) -> nn.Sequential:
    """A 3x3x3 causal conv factorized as spatial (1,3,3) then temporal (3,1,1): keys ``{0,1}.conv3d.*``."""
    return nn.Sequential(
        CausalConv3d(chan_in, chan_out, (1, 3, 3), padding=1),
        CausalConv3d(chan_out, chan_out, (3, 1, 1), padding=0),
    )


def pointwise_conv(chan_in: int, chan_out: int) -> CausalConv3d:
    return CausalConv3d(chan_in, chan_out, (1, 1, 1))


class CausalGroupNorm(nn.Module):
    """GroupNorm(1, eps 1e-6) applied to every frame on its own (official ``CausalNormalize``, num_groups=1)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(num_groups=1, num_channels=channels, eps=1e-6, affine=True)

    def forward(self, x_BCTHW: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x_BCTHW.shape
        x_NCHW = x_BCTHW.transpose(1, 2).reshape(b * t, c, h, w)
        return self.norm(x_NCHW).reshape(b, t, c, h, w).transpose(1, 2)


class ResnetBlock(nn.Module):
    """norm-SiLU-conv twice plus a (1x1x1 projected when channels change) shortcut; factorized convs."""

    def __init__(self, chan_in: int, chan_out: int) -> None:
        super().__init__()
        self.norm1 = CausalGroupNorm(chan_in)
        self.conv1 = factorized_conv(chan_in, chan_out)
        self.norm2 = CausalGroupNorm(chan_out)
        self.conv2 = factorized_conv(chan_out, chan_out)
        # No key at all when the channels agree (official nn.Identity).
        self.nin_shortcut = pointwise_conv(chan_in, chan_out) if chan_in != chan_out else None

    def forward(self, x_BCTHW: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x_BCTHW)))
        h = self.conv2(F.silu(self.norm2(h)))  # dropout is 0 in every released config; inference only
        shortcut = x_BCTHW if self.nin_shortcut is None else self.nin_shortcut(x_BCTHW)
        return shortcut + h


class HybridDownsample(nn.Module):
    """Strided conv + average pool, spatially (x2 in H, W) and/or temporally (x2 in T, causal).

    Unused convs do not exist (official ``nn.Identity``), so a level that resamples nothing has no keys.
    """

    def __init__(self, channels: int, spatial: bool, temporal: bool) -> None:
        super().__init__()
        self.spatial, self.temporal = spatial, temporal
        if spatial:
            self.conv1 = CausalConv3d(channels, channels, (1, 3, 3), stride=2)
        if temporal:
            self.conv2 = CausalConv3d(channels, channels, (3, 1, 1), time_stride=2)
        if spatial or temporal:
            self.conv3 = pointwise_conv(channels, channels)

    def forward(self, x_BCTHW: torch.Tensor) -> torch.Tensor:
        if not (self.spatial or self.temporal):
            return x_BCTHW
        if self.spatial:
            x_BCTHW = F.pad(x_BCTHW, (0, 1, 0, 1, 0, 0))  # zero row/column at the bottom/right only
            x_BCTHW = self.conv1(x_BCTHW) + avg_pool(x_BCTHW, (1, 2, 2))
        if self.temporal:
            # One copy of frame 0 in front for both paths; conv2 adds its own causal frame on top (official).
            x_BCTHW = prepend_first_frame(x_BCTHW, 1)
            x_BCTHW = self.conv2(x_BCTHW) + avg_pool(x_BCTHW, (2, 1, 1))
        return self.conv3(x_BCTHW)


def causal_time_upsample(x_BCTHW: torch.Tensor) -> torch.Tensor:
    """T -> 2T-1: every frame twice, then drop the first copy of frame 0; a single frame stays single (official)."""
    if x_BCTHW.shape[2] <= 1:
        return x_BCTHW
    return x_BCTHW.repeat_interleave(2, dim=2)[:, :, 1:]


class HybridUpsample(nn.Module):
    """Nearest repeat + residual conv, temporally (T -> 2T-1, causal) and/or spatially (x2 in H, W)."""

    def __init__(self, channels: int, spatial: bool, temporal: bool) -> None:
        super().__init__()
        self.spatial, self.temporal = spatial, temporal
        if temporal:
            self.conv1 = CausalConv3d(channels, channels, (3, 1, 1))
        if spatial:
            self.conv2 = CausalConv3d(channels, channels, (1, 3, 3), padding=1)
        if spatial or temporal:
            self.conv3 = pointwise_conv(channels, channels)
        # x -> x repeated in time; None: :func:`causal_time_upsample` on the whole video.
        self.time_upsample_hook: Optional[Callable[[torch.Tensor], torch.Tensor]] = None

    def forward(self, x_BCTHW: torch.Tensor) -> torch.Tensor:
        if not (self.spatial or self.temporal):
            return x_BCTHW
        if self.temporal:
            upsample = causal_time_upsample if self.time_upsample_hook is None else self.time_upsample_hook
            x_BCTHW = upsample(x_BCTHW)
            x_BCTHW = self.conv1(x_BCTHW) + x_BCTHW
        if self.spatial:
            x_BCTHW = x_BCTHW.repeat_interleave(2, dim=3).repeat_interleave(2, dim=4)
            x_BCTHW = self.conv2(x_BCTHW) + x_BCTHW
        return self.conv3(x_BCTHW)
