"""Keep the conditioning models off the GPU while they are not running (``runtime.offload=true``).

The DiT runs 70 forwards per chunk and stays on the GPU. The tokenizer encoder (once per chunk), its decoder
(once per chunk), MoGe (once per chunk at most) and T5 (once per video, on a cache miss) run briefly, so on a
small GPU they live on the CPU and visit the GPU only for their call: the pattern of the official
``--offload_tokenizer`` / ``--offload_text_encoder_model`` / ``--offload_guardrail_models`` flags, without their
reloading from disk. Moving the 7B-class DiT's companions costs PCIe time per chunk (about 0.1 s for the
tokenizer's ~0.5 GB at 10 GB/s), which is why it is off by default.

With offload off every ``use`` is a no-op; on a CPU run with offload on, the moves are CPU -> CPU no-ops but
the bookkeeping (``resident``, ``visits``) still runs, which is what the CPU tests check.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from gen3c_dist.model.tokenizer.video_tokenizer import VideoTokenizer


class DeviceSwap:
    """Moves modules between their home device and the compute device around each use.

    ``home`` is where models are loaded and rest: the CPU when offloading, else the compute device.
    ``resident`` names the models currently visiting the compute device (the tests read it).
    """

    def __init__(self, compute: torch.device, *, offload: bool) -> None:
        self.compute = torch.device(compute)
        self.home = torch.device("cpu") if offload else self.compute
        self.offload = offload
        self.resident: set[str] = set()
        self.visits: list[str] = []  # every use, in order (the tests read it)

    @property
    def moves(self) -> bool:
        """Offloading tracks every use, even on a CPU run where the moves themselves are no-ops."""
        return self.offload

    def _release(self) -> None:
        if self.compute.type == "cuda":
            torch.cuda.empty_cache()  # give the freed blocks back, so the DiT's activations can use them

    @contextlib.contextmanager
    def use(self, name: str, module: nn.Module) -> Iterator[nn.Module]:
        """``module`` on the compute device for the duration of the block (MoGe, T5)."""
        if not self.moves:
            yield module
            return
        module.to(self.compute)
        self.resident.add(name)
        self.visits.append(name)
        try:
            yield module
        finally:
            module.to(self.home)
            self.resident.discard(name)
            self._release()

    @contextlib.contextmanager
    def use_tokenizer(self, tokenizer: VideoTokenizer, part: str) -> Iterator[VideoTokenizer]:
        """The tokenizer's ``encoder`` or ``decoder`` (and its latent statistics) on the compute device."""
        if part not in ("encoder", "decoder"):
            raise ValueError(f"tokenizer part must be 'encoder' or 'decoder', got {part!r}")
        if not self.moves:
            yield tokenizer
            return
        self._place_tokenizer(tokenizer, part, self.compute)
        self.resident.add(f"tokenizer.{part}")
        self.visits.append(f"tokenizer.{part}")
        try:
            yield tokenizer
        finally:
            self._place_tokenizer(tokenizer, part, self.home)
            self.resident.discard(f"tokenizer.{part}")
            self._release()

    @staticmethod
    def _place_tokenizer(tokenizer: VideoTokenizer, part: str, device: torch.device) -> None:
        module = getattr(tokenizer, part)
        if module is not None:
            module.to(device)
        tokenizer.latent_mean = tokenizer.latent_mean.to(device)
        tokenizer.latent_std = tokenizer.latent_std.to(device)
        tokenizer.device = device  # encode/decode move their inputs to ``tokenizer.device``
