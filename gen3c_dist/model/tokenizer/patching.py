"""3D Haar wavelet patcher and unpatcher of the Cosmos video tokenizer.

Each Haar level splits every axis (T, H, W) into a low and a high band with the 2-tap filters of the
``wavelets`` buffer, giving 8 bands; ``patch_size = 4`` means 2 levels, 3 -> 192 channels, /4 in every axis.
Band order is temporal-major, then height, then width (``lll, llh, lhl, lhh, hll, hlh, hhl, hhh``), and the
channel index is ``band * C + c``, as in the official ``Patcher3D``.

The official code runs every filter as a strided grouped conv; here the same 2-tap filters are applied to the
even/odd samples directly (same arithmetic, without the conv machinery). The buffers keep their official names
and dtypes so the state dict carries exactly the released TorchScript keys; the loader rebuilds and checks them
instead of copying them.

Sequence-parallel seam: :class:`HaarUnpatcher3D` has an optional ``time_trim_hook`` (``None`` by default) that
replaces dropping the leading copies of frame 0, so only the time slice holding global frame 0 drops them.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

HAAR_TAP = 0.7071067811865476  # 1/sqrt(2); stored as float32, as in the released files
# Official rescale per level: divide by 2*sqrt(2) in the patcher, multiply in the unpatcher (a float32 scalar).
_LEVEL_SCALE = 2 * math.sqrt(2.0)


def haar_buffers(patch_size: int) -> dict[str, torch.Tensor]:
    """The persistent buffers of the official (un)patcher, rebuilt from the config."""
    return {
        "wavelets": torch.tensor([HAAR_TAP, HAAR_TAP], dtype=torch.float32),
        "_arange": torch.arange(2, dtype=torch.int64),
        "patch_size_buffer": torch.full((1,), patch_size, dtype=torch.int32),
    }


def _filters(wavelets: torch.Tensor, arange: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Low-pass = reversed wavelet, high-pass = wavelet * (-1)^k (official ``hl``/``hh``)."""
    low = wavelets.flip(0).to(dtype)
    high = (wavelets * ((-1) ** arange)).to(dtype)
    return low, high


def _analyse_axis(x: torch.Tensor, dim: int, low: torch.Tensor,
                  high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One stride-2, 2-tap correlation along ``dim``: out[i] = f[0]*x[2i] + f[1]*x[2i+1]."""
    even = x.narrow(dim, 0, x.shape[dim] // 2 * 2)
    pairs = even.unflatten(dim, (x.shape[dim] // 2, 2))
    first, second = pairs.select(dim + 1, 0), pairs.select(dim + 1, 1)
    return first * low[0] + second * low[1], first * high[0] + second * high[1]


def _synthesise_axis(lo: torch.Tensor, hi: torch.Tensor, dim: int, low: torch.Tensor,
                     high: torch.Tensor) -> torch.Tensor:
    """Stride-2 transposed 2-tap conv along ``dim``: y[2i+j] = lo[i]*low[j] + hi[i]*high[j]."""
    first = lo * low[0] + hi * high[0]
    second = lo * low[1] + hi * high[1]
    return torch.stack([first, second], dim=dim + 1).flatten(dim, dim + 1)


class HaarPatcher3D(nn.Module):
    """(B, C, T, H, W) -> (B, C*p^3, (T+p-1)/p, H/p, W/p); the first frame is repeated p times first."""

    def __init__(self, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.num_levels = int(math.log2(patch_size))
        for name, value in haar_buffers(patch_size).items():
            self.register_buffer(name, value)

    def _level(self, x_BCTHW: torch.Tensor) -> torch.Tensor:
        low, high = _filters(self.wavelets, self._arange, x_BCTHW.dtype)
        # Reflect-pad one sample at the end of T, H and W (official pad (0, 1) per axis); only odd sizes use it.
        x_BCTHW = F.pad(x_BCTHW, (0, 1, 0, 1, 0, 1), mode="reflect")
        bands = [x_BCTHW]
        for dim in (2, 3, 4):  # time, then height, then width: band order t-major
            bands = [band for b in bands for band in _analyse_axis(b, dim, low, high)]
        return torch.cat(bands, dim=1) / _LEVEL_SCALE

    def forward(self, x_BCTHW: torch.Tensor) -> torch.Tensor:
        first_frame = x_BCTHW[:, :, :1]
        x_BCTHW = torch.cat([first_frame.repeat_interleave(self.patch_size, dim=2), x_BCTHW[:, :, 1:]], dim=2)
        for _ in range(self.num_levels):
            x_BCTHW = self._level(x_BCTHW)
        return x_BCTHW


class HaarUnpatcher3D(nn.Module):
    """Inverse of :class:`HaarPatcher3D`; drops the p-1 leading copies of the first frame."""

    def __init__(self, patch_size: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.num_levels = int(math.log2(patch_size))
        buffers = haar_buffers(patch_size)
        # The official UnPatcher3D has no patch_size_buffer.
        self.register_buffer("wavelets", buffers["wavelets"])
        self.register_buffer("_arange", buffers["_arange"])
        # (x, count) -> x without the first ``count`` frames of the whole video; None: drop them here.
        self.time_trim_hook: Optional[Callable[[torch.Tensor, int], torch.Tensor]] = None

    def _level(self, x_BCTHW: torch.Tensor) -> torch.Tensor:
        low, high = _filters(self.wavelets, self._arange, x_BCTHW.dtype)
        bands = list(torch.chunk(x_BCTHW, 8, dim=1))
        for dim in (4, 3, 2):  # inverse order: width, then height, then time
            bands = [_synthesise_axis(bands[i], bands[i + 1], dim, low, high) for i in range(0, len(bands), 2)]
        return bands[0] * _LEVEL_SCALE

    def forward(self, x_BCTHW: torch.Tensor) -> torch.Tensor:
        for _ in range(self.num_levels):
            x_BCTHW = self._level(x_BCTHW)
        if self.time_trim_hook is not None:
            return self.time_trim_hook(x_BCTHW, self.patch_size - 1)
        return x_BCTHW[:, :, self.patch_size - 1 :]
