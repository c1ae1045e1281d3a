"""The sizes ``benchmarks/gpu_check.py`` runs at, and what its steps hand to each other."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import torch

from gen3c_dist.perf.flops import TEXT_TOKENS, latent_thw

from gpu_check_measure import DeviceTimer, MemoryProbe  # benchmarks/, beside this file


@dataclasses.dataclass(frozen=True)
class CheckShapes:
    """Every size of a check. ``FULL`` is the real chunk; ``SMOKE`` the same code path on a CPU in seconds."""

    model_preset: str  # gen3c_dist.config.MODEL_PRESETS (and conf/model/ for the runner)
    tokenizer_preset: str
    video_thw: tuple[int, int, int]  # one chunk: pixel frames, height, width
    text_tokens: int
    warmup_latent_frames: int  # latent frames of the cheap forward that precedes each kernel's first full one
    warmup_video_hw: tuple[int, int]  # size of the tokenizer's warm-up encode/decode (all 121 frames)
    matmul_n: int
    matmul_repeats: int
    repeats: int  # timed full-size runs per kernel / tokenizer pass, while the step's budget allows
    chunk_steps: int  # denoising steps of the runner's chunk (2 forwards each, official guidance)

    @property
    def latent_thw(self) -> tuple[int, int, int]:
        frames, height, width = self.video_thw
        return latent_thw(height, width, pixel_frames=frames)

    @property
    def warmup_latent_thw(self) -> tuple[int, int, int]:
        _, height, width = self.latent_thw
        return self.warmup_latent_frames, height, width


FULL = CheckShapes(
    model_preset="gen3c_cosmos_7b", tokenizer_preset="cv8x8x8_720p", video_thw=(121, 704, 1280),
    text_tokens=TEXT_TOKENS, warmup_latent_frames=2, warmup_video_hw=(16, 16), matmul_n=8192, matmul_repeats=10,
    repeats=2, chunk_steps=35,
)
SMOKE = CheckShapes(
    model_preset="tiny", tokenizer_preset="tiny", video_thw=(121, 16, 32), text_tokens=TEXT_TOKENS,
    warmup_latent_frames=2, warmup_video_hw=(16, 16), matmul_n=128, matmul_repeats=3, repeats=2, chunk_steps=2,
)


@dataclasses.dataclass
class CheckContext:
    """Settings of the check, plus what one step measured that a later one needs."""

    shapes: CheckShapes
    device: torch.device
    dtype: torch.dtype
    seed: int
    out_dir: Path
    work_dir: Path  # the runner's outputs (its mp4 stays here, out of the folder that is sent back)
    matmul_flops_per_s: Optional[float] = None  # step 1: the ceiling MFU is measured against
    model: Optional[torch.nn.Module] = None  # step 2 builds it, step 3 compiles it, then it is released
    auto_kernel: Optional[str] = None  # what runtime.attention_kernel=auto runs here
    eager_best_s: dict[str, float] = dataclasses.field(default_factory=dict)  # kernel -> best full forward
    tokenizer_best_s: dict[str, float] = dataclasses.field(default_factory=dict)  # "encode" / "decode"

    @property
    def timer(self) -> DeviceTimer:
        return DeviceTimer(self.device)

    @property
    def memory(self) -> MemoryProbe:
        return MemoryProbe(self.device)

    def mfu(self, flops_per_s: Optional[float]) -> Optional[float]:
        if flops_per_s is None or not self.matmul_flops_per_s:
            return None
        return flops_per_s / self.matmul_flops_per_s
