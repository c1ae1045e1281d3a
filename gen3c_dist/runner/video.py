"""The chunk loop for one video: conditioning, denoising on the group, decoding, outputs.

Chunk k covers frames [120k, 120k + 120]; chunks overlap by one frame and the first frame of every later chunk
is dropped (spec 1.6). After each chunk the lead hands the chunk's frames to the streaming mp4 writers and, for
a multi-chunk video, saves what a rerun needs under ``<name>.partial/`` (:mod:`gen3c_dist.runner.partial`); both
go through the background writer, so the next chunk starts at once. A rerun with the same output name and
settings resumes from the last complete chunk. Every random draw is seeded by (seed, chunk), so a resumed run
gives the same result as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from typing import Callable, Optional, Protocol

import numpy as np
import torch

from gen3c_dist.config import RunConfig
from gen3c_dist.runner.background import BackgroundWriter
from gen3c_dist.runner.conditioning_stage import ChunkConditioning, VideoConditioner
from gen3c_dist.runner.denoise import GuidedFnBuilder, denoise_chunk
from gen3c_dist.runner.jobs import VideoJob, check_num_frames
from gen3c_dist.runner.partial import ChunkResult, PartialState
from gen3c_dist.runner.timing import StageTimer
from gen3c_dist.runner.video_outputs import VideoOutputs
from gen3c_dist.sampling.guidance import ForwardFn

logger = logging.getLogger(__name__)


class ChunkSteps(Protocol):
    """How the replica conditions and decodes a chunk; called on every rank of the replica, in the same order."""

    def condition(self, chunk_index: int, last_frame_HW3: Optional[torch.Tensor]) -> ChunkConditioning: ...

    def decode(self, latent_BCTHW: torch.Tensor) -> Optional[np.ndarray]:
        """uint8 frames [121, H, W, 3] on the lead, None elsewhere."""


@dataclasses.dataclass
class GroupRuntime:
    """How this rank takes part in every video. Single-process runs use trivial callables."""

    is_lead: bool
    forward: Callable[[], ForwardFn]  # the DiT forward, waiting for the background load the first time
    guided_fn_builder: GuidedFnBuilder
    share_int: Callable[[Optional[int]], int]  # a small decision of the lead, given to the whole replica
    device: torch.device
    dtype: torch.dtype


def settings_fingerprint(job: VideoJob, cfg: RunConfig) -> str:
    """What must not change between a run and its resumption."""
    relevant = {
        "job": dataclasses.asdict(job),
        "model": dataclasses.asdict(cfg.model),
        "checkpoints": dataclasses.asdict(cfg.checkpoints),
        "cache": dataclasses.asdict(cfg.cache),
        "text": dataclasses.asdict(cfg.text),
        "tokenizer": dataclasses.asdict(cfg.tokenizer),
        "sampler": dataclasses.asdict(cfg.sampler),
    }
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _resume(job: VideoJob, cfg: RunConfig, conditioner: VideoConditioner, partial: PartialState,
            outputs: VideoOutputs, writer: BackgroundWriter) -> tuple[int, Optional[torch.Tensor]]:
    """Chunks already done and the last frame so far; their frames are re-fed to the new mp4 streams."""
    resumed = partial.load() if cfg.output.resume else None
    if resumed is None:
        return 0, None
    conditioner.load_state_dict(resumed.state)
    for chunk in resumed.chunks:
        writer.submit(outputs.add_chunk, chunk)
    logger.info("resuming %s after chunk %d of %d", job.name, len(resumed.chunks), check_num_frames(job.input.num_frames))
    return len(resumed.chunks), torch.from_numpy(resumed.chunks[-1].frames[-1].copy())


def generate_video(
    job: VideoJob,
    *,
    cfg: RunConfig,
    runtime: GroupRuntime,
    steps: ChunkSteps,
    conditioner: Optional[VideoConditioner],
    outputs: Optional[VideoOutputs],
    writer: BackgroundWriter,
    timer: StageTimer,
    on_step: Optional[Callable[[int, int], None]] = None,
) -> None:
    """Make every chunk of ``job``; the lead feeds ``outputs`` (still open at the end), the others pass None."""
    num_chunks = check_num_frames(job.input.num_frames)
    partial = last_frame = None
    start = 0
    if runtime.is_lead:
        assert conditioner is not None and outputs is not None
        partial = PartialState(outputs.stem, settings_fingerprint(job, cfg))
        start, last_frame = _resume(job, cfg, conditioner, partial, outputs, writer)
    start = runtime.share_int(start)
    forward_fn = None
    for k in range(start, num_chunks):
        cond = steps.condition(k, last_frame)
        if forward_fn is None:
            with timer.stage("load_wait"):  # the DiT load overlapped the first conditioning
                forward_fn = runtime.forward()
        timer.start_steps()

        def observe(step: int, record: dict) -> None:
            timer.step_done()
            if on_step is not None:
                on_step(k, step)

        latent = denoise_chunk(
            forward_fn, cond, guided_fn_builder=runtime.guided_fn_builder, sampler=cfg.sampler, seed=job.input.seed,
            chunk_index=k, fps=job.input.fps, dtype=runtime.dtype, device=runtime.device, observer=observe,
        )
        frames = steps.decode(latent)  # [121, H, W, 3] on the lead
        if runtime.is_lead:
            assert frames is not None and conditioner is not None and outputs is not None and partial is not None
            panels = min(num_chunks, cfg.model.frame_buffer_max)  # the official padding width (spec 1.4 step 6)
            chunk = ChunkResult(
                frames=frames if k == 0 else frames[1:],
                preview=preview_panel(conditioner.last_warps[0], panels=panels, drop_first=k > 0),
                latent=latent.float().cpu(),
            )
            last_frame = torch.from_numpy(frames[-1].copy())
            writer.submit(outputs.add_chunk, chunk)
            if k + 1 < num_chunks:  # the cache changes in place with the next chunk: save a copy
                state = {name: t.clone() for name, t in conditioner.state_dict().items()}
                writer.submit(partial.save, k, chunk, state)


def preview_panel(warps_BTN3HW: torch.Tensor, *, panels: int, drop_first: bool) -> np.ndarray:
    """One chunk's cache renders side by side, padded with -1 to ``panels`` buffers, as uint8 (spec 1.4 step 6)."""
    w_TN3HW = warps_BTN3HW[0].float().cpu()
    if w_TN3HW.shape[1] < panels:
        pad = -torch.ones(w_TN3HW.shape[0], panels - w_TN3HW.shape[1], *w_TN3HW.shape[2:])
        w_TN3HW = torch.cat([w_TN3HW, pad], dim=1)
    if drop_first:
        w_TN3HW = w_TN3HW[1:]  # the overlap frame, dropped from the video too
    as_uint8 = ((w_TN3HW.clamp(-1, 1) * 0.5 + 0.5) * 255).to(torch.uint8)  # official mapping
    return torch.cat(list(as_uint8.permute(1, 0, 3, 4, 2)), dim=2).numpy()  # [T, H, W * panels, 3]
