"""One video on one replica: the chunk loop, each chunk's denoising, and what the lead hands to its outputs.

Chunk k covers frames [120k, 120k + 120]; chunks overlap by one frame and the first frame of every later chunk
is dropped (spec 1.6). After each chunk the lead hands the chunk's frames to the streaming mp4 writers and, for
a multi-chunk video, saves what a rerun needs under ``<name>.partial/`` (:mod:`gen3c_dist.runner.resume`); both
go through the background writer, so the next chunk starts at once. A rerun with the same output name and
settings resumes from the last complete chunk. Every random draw is seeded by (seed, chunk), so a resumed run
gives the same result as an uninterrupted one.

Denoising runs on every rank of the replica: the cond and uncond passes one after the other, or on the two halves
of a cfg-parallel replica (:func:`gen3c_dist.sampling.guidance.guided_fn`, with the replica's cfg split).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
from typing import Callable, Optional

import numpy as np
import torch

from gen3c_dist.conditioning.sources import cache_source_for
from gen3c_dist.conditioning.video_conditioner import ChunkConditioning, VideoConditioner
from gen3c_dist.config import RunConfig, SamplerConfig
from gen3c_dist.model.inputs import DiTInputs, ForwardFn
from gen3c_dist.parallel.cfg_parallel import split_for
from gen3c_dist.runner.background import BackgroundWriter
from gen3c_dist.runner.chunks import ChunkSteps, chunk_steps
from gen3c_dist.runner.jobs import VideoJob
from gen3c_dist.runner.models import LoadedModels
from gen3c_dist.runner.outputs import ChunkResult, VideoOutputs
from gen3c_dist.runner.replica import Replica
from gen3c_dist.runner.resume import PartialState
from gen3c_dist.runner.timing import StageTimer
from gen3c_dist.sampling import edm
from gen3c_dist.sampling.guidance import CfgSplit, guided_fn
from gen3c_dist.sampling.loop import FrameCondition, StepObserver, augment_noise, initial_noise, sample
from gen3c_dist.shapes import num_chunks

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class VideoRun:
    """What one video leaves behind for its record (every rank) and its outputs (the lead)."""

    timer: StageTimer
    rank_lines: list[dict]


# ---- one chunk's denoising (spec sections 4.3-4.5) ------------------------------------------------------------
def dit_inputs(cond: ChunkConditioning, *, fps: float, dtype: torch.dtype,
               device: torch.device) -> tuple[DiTInputs, DiTInputs]:
    """The cond and uncond passes' inputs: the uncond pass sees the negative prompt and zeroed warp latents, the
    same condition mask (latent frame 0) and the all-zero padding mask (spec 2.2, 4.4, 4.5, fact 1)."""
    B, _, T, H, W = cond.gt_latent.shape
    input_mask = torch.zeros(B, 1, T, H, W, dtype=dtype, device=device)
    input_mask[:, :, 0] = 1
    padding_mask = torch.zeros(B, 1, H, W, dtype=dtype, device=device)
    cond_inputs = DiTInputs(cond.text_cond, input_mask, cond.pose, padding_mask, float(fps))
    uncond_inputs = DiTInputs(cond.text_uncond, input_mask, torch.zeros_like(cond.pose), padding_mask, float(fps))
    return cond_inputs, uncond_inputs


def denoise_chunk(forward_fn: ForwardFn, cond: ChunkConditioning, *, split: Optional[CfgSplit], sampler: SamplerConfig,
                  seed: int, chunk_index: int, fps: float, dtype: torch.dtype, device: torch.device,
                  observer: Optional[StepObserver] = None) -> torch.Tensor:
    """The clean latent [1, 16, T, H, W] of one chunk, identical on every rank of the replica."""
    shape = tuple(cond.gt_latent.shape)
    sigmas = edm.karras_sigmas(sampler.steps, sigma_min=sampler.sigma_min, sigma_max=sampler.sigma_max).to(device)
    x_init = (initial_noise(shape, seed=seed, chunk_index=chunk_index) * edm.init_noise_sigma(sampler.sigma_max)).to(device)
    condition = FrameCondition(
        gt_latent_BCTHW=cond.gt_latent,
        # The official noise is seeded with the run seed and reused for every step and chunk (spec 1.7).
        augment_noise_BCTHW=augment_noise(shape, seed).to(device=device, dtype=dtype),
        num_frames=1,
        augment_sigma=sampler.condition_augment_sigma,
    )
    cond_inputs, uncond_inputs = dit_inputs(cond, fps=fps, dtype=dtype, device=device)
    guided = guided_fn(forward_fn, cond=cond_inputs, uncond=uncond_inputs, guidance=sampler.guidance,
                       policy=sampler.guidance_policy, split=split)
    return sample(guided, x_init=x_init, sigmas=sigmas, condition=condition, model_dtype=dtype,
                  sigma_data=sampler.sigma_data, observer=observer)


# ---- the chunk loop ---------------------------------------------------------------------------------------------
def _resume(job: VideoJob, cfg: RunConfig, conditioner: VideoConditioner, partial: PartialState,
            outputs: VideoOutputs, writer: BackgroundWriter) -> tuple[int, Optional[torch.Tensor]]:
    """Chunks already done and the last frame so far; their frames are re-fed to the new mp4 streams."""
    resumed = partial.load() if cfg.output.resume else None
    if resumed is None:
        return 0, None
    conditioner.load_state_dict(resumed.state)
    for chunk in resumed.chunks:
        writer.submit(outputs.add_chunk, chunk)
    logger.info("resuming %s after chunk %d of %d", job.name, len(resumed.chunks), num_chunks(job.input.num_frames))
    return len(resumed.chunks), torch.from_numpy(resumed.chunks[-1].frames[-1].copy())


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


def generate_video(job: VideoJob, *, cfg: RunConfig, replica: Replica, models: LoadedModels, steps: ChunkSteps,
                   conditioner: Optional[VideoConditioner], outputs: Optional[VideoOutputs], timer: StageTimer,
                   on_step: Optional[Callable[[int, int], None]] = None) -> None:
    """Make every chunk of ``job``; the lead feeds ``outputs`` (still open at the end), the others pass None."""
    settings, writer = replica.settings, models.writer
    chunks = num_chunks(job.input.num_frames)
    partial = last_frame = None
    start = 0
    if replica.is_lead:
        partial = PartialState(outputs.stem, outputs.fingerprint.serialised())
        start, last_frame = _resume(job, cfg, conditioner, partial, outputs, writer)
    start = replica.share_int(start)
    forward_fn = None
    for k in range(start, chunks):
        cond = steps.condition(k, last_frame)
        if forward_fn is None:
            with timer.stage("load_wait"):  # the DiT load overlapped the first conditioning
                forward_fn = models.dit.result()
        timer.start_steps()

        def observe(step: int, record: dict) -> None:
            timer.step_done()
            if on_step is not None:
                on_step(k, step)

        latent = denoise_chunk(forward_fn, cond, split=split_for(replica.layout, counter=replica.counter),
                               sampler=cfg.sampler,
                               seed=job.input.seed, chunk_index=k, fps=job.input.fps, dtype=settings.dtype,
                               device=settings.device, observer=observe)
        frames = steps.decode(latent)  # [121, H, W, 3] on the lead
        if replica.is_lead:
            panels = conditioner.source.preview_buffers(chunks)  # the official padding width (spec 1.4 step 6)
            chunk = ChunkResult(frames=frames if k == 0 else frames[1:],
                                preview=preview_panel(conditioner.last_warps[0], panels=panels, drop_first=k > 0),
                                latent=latent.float().cpu())
            last_frame = torch.from_numpy(frames[-1].copy())
            writer.submit(outputs.add_chunk, chunk)
            if k + 1 < chunks:  # the cache changes in place with the next chunk: save a copy
                state = {name: t.clone() for name, t in conditioner.state_dict().items()}
                writer.submit(partial.save, k, chunk, state)


def run_video(cfg: RunConfig, job: VideoJob, replica: Replica, models: LoadedModels,
              outputs: Optional[VideoOutputs]) -> VideoRun:
    """Make one video on this replica (every rank calls it); the lead's ``outputs`` stay open for the writer."""
    timer = StageTimer()
    replica.counter.reset()
    replica.tokenizer_counter.reset()
    conditioner = None
    if replica.is_lead:
        cond_models = models.conditioning
        source = cache_source_for(job.input, job.trajectory, cfg.cache, frame_buffer_max=cfg.model.frame_buffer_max,
                                  models=cond_models)
        conditioner = VideoConditioner(source, job.input, models=cond_models, model_cfg=cfg.model, text_cfg=cfg.text,
                                       t5_dir=cfg.checkpoints.t5_dir, dtype=replica.settings.dtype)
    steps = chunk_steps(cfg, replica, conditioner=conditioner, models=models.conditioning, timer=timer)
    progress = _progress_bar(cfg, job, enabled=replica.rank == 0 and cfg.runtime.progress)
    try:
        with torch.inference_mode(), _logs_around(progress):
            generate_video(job, cfg=cfg, replica=replica, models=models, steps=steps, conditioner=conditioner,
                           outputs=outputs, timer=timer, on_step=lambda chunk, step: progress.update(1) if progress else None)
    finally:
        if progress:
            progress.close()
    return VideoRun(timer=timer, rank_lines=replica.gather_rank_lines(len(timer.step_seconds)))


def _progress_bar(cfg: RunConfig, job: VideoJob, *, enabled: bool):
    """A tqdm bar on rank 0, only when stderr is a terminal: in a log file, a bar is a wall of carriage returns."""
    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm import tqdm  # only for a terminal

    chunks = num_chunks(job.input.num_frames)
    return tqdm(total=chunks * cfg.sampler.steps, desc=f"{job.name}: {chunks} chunk(s) x {cfg.sampler.steps} steps",
                unit="step")


def _logs_around(progress) -> contextlib.AbstractContextManager:
    """While a bar is drawn, log lines go through tqdm, so they print above the bar instead of through it."""
    if progress is None:
        return contextlib.nullcontext()
    from tqdm.contrib.logging import logging_redirect_tqdm  # only for a terminal

    return logging_redirect_tqdm()
