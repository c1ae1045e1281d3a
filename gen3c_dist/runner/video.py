"""The chunk loop for one video: conditioning on the lead, broadcast, denoising on the group, decoding, outputs.

Chunk k covers frames [120k, 120k + 120]; chunks overlap by one frame and the first frame of every later chunk
is dropped (spec 1.6). After each chunk the lead saves what a rerun needs (frames so far, cache buffers, the
warp-noise RNG, latents) under ``<name>.partial/``, and a rerun with the same output name and the same
settings resumes from the last complete chunk. Every random draw is seeded by (seed, chunk), so a resumed run
gives the same result as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from gen3c_dist.config import RunConfig
from gen3c_dist.runner.conditioning_stage import ChunkConditioning, VideoConditioner
from gen3c_dist.runner.denoise import GuidedFnBuilder, denoise_chunk
from gen3c_dist.runner.jobs import CHUNK_FRAMES, VideoJob, check_num_frames
from gen3c_dist.runner.outputs import write_json, write_mp4, write_safetensors
from gen3c_dist.runner.timing import StageTimer
from gen3c_dist.sampling.guidance import ForwardFn

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class GroupRuntime:
    """How this rank takes part in one video. Single-process runs use trivial callables."""

    is_lead: bool
    forward_fn: ForwardFn  # the DiT forward: the model itself, or its context-parallel wrapper
    guided_fn_builder: GuidedFnBuilder
    broadcast_conditioning: Callable[[Optional[ChunkConditioning]], ChunkConditioning]  # lead -> group
    share_int: Callable[[Optional[int]], int]  # a small decision of the lead, given to the whole group
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


class PartialState:
    """``<stem>.partial/state.safetensors``: the lead's snapshot after each complete chunk."""

    def __init__(self, stem: Path, fingerprint: str) -> None:
        self.folder = stem.with_name(stem.name + ".partial")
        self.file = self.folder / "state.safetensors"
        self.fingerprint = fingerprint

    def load(self) -> Optional[tuple[int, dict[str, torch.Tensor]]]:
        if not self.file.exists():
            return None
        from safetensors import safe_open

        with safe_open(str(self.file), framework="pt") as handle:
            meta = handle.metadata()
            tensors = {k: handle.get_tensor(k) for k in handle.keys()}
        if meta.get("fingerprint") != self.fingerprint:
            raise ValueError(
                f"{self.folder} holds a partial run made with different settings; delete it or choose another output.name"
            )
        return int(meta["chunks_done"]), tensors

    def save(self, chunks_done: int, tensors: dict[str, torch.Tensor]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        write_safetensors(self.file, tensors, metadata={"fingerprint": self.fingerprint, "chunks_done": str(chunks_done)})

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


@dataclasses.dataclass
class LeadState:
    """The lead's running results for one video."""

    frames: list[np.ndarray]  # uint8 [T, H, W, 3] per chunk, overlap frame already dropped
    latents: list[torch.Tensor]  # [1, 16, Lt, h, w] per chunk
    previews: list[np.ndarray]  # uint8 cache renders per chunk [T, H, W * panels, 3], overlap frame dropped

    def snapshot(self, conditioner: VideoConditioner) -> dict[str, torch.Tensor]:
        state = {f"latent.{i}": lat.float().cpu() for i, lat in enumerate(self.latents)}
        state["frames"] = torch.from_numpy(np.concatenate(self.frames))
        state["previews"] = torch.from_numpy(np.concatenate(self.previews))
        state.update(conditioner.state_dict())
        return state

    @classmethod
    def restore(cls, chunks_done: int, tensors: dict[str, torch.Tensor]) -> "LeadState":
        latents = [tensors[f"latent.{i}"] for i in range(chunks_done)]
        return cls(frames=[tensors["frames"].numpy()], latents=latents, previews=[tensors["previews"].numpy()])


def generate_video(
    job: VideoJob,
    *,
    cfg: RunConfig,
    runtime: GroupRuntime,
    conditioner: Optional[VideoConditioner],
    decode_uint8: Optional[Callable[[torch.Tensor], torch.Tensor]],
    timer: StageTimer,
    on_step: Optional[Callable[[int, int], None]] = None,
) -> Optional[LeadState]:
    """Make every chunk of ``job``; returns the lead's results (None on other ranks)."""
    num_chunks = check_num_frames(job.input.num_frames)
    stem = job.stem(cfg.output.dir)
    partial = PartialState(stem, settings_fingerprint(job, cfg)) if runtime.is_lead else None
    lead = None
    start = 0
    if runtime.is_lead:
        assert conditioner is not None and partial is not None
        resumed = partial.load() if cfg.output.resume else None
        if resumed is not None:
            start, tensors = resumed
            lead = LeadState.restore(start, tensors)
            conditioner.load_state_dict(tensors)
            logger.info("resuming %s after chunk %d of %d", job.name, start, num_chunks)
        else:
            lead = LeadState(frames=[], latents=[], previews=[])
    start = runtime.share_int(start)
    for k in range(start, num_chunks):
        cond = None
        if runtime.is_lead:
            last_frame = None if k == 0 else torch.from_numpy(lead.frames[-1][-1].copy())
            cond = conditioner.chunk(k, last_frame)  # times its own "conditioning" and "encode" stages
        with timer.stage("broadcast"):
            cond = runtime.broadcast_conditioning(cond)
        timer.start_steps()

        def observe(step: int, record: dict) -> None:
            timer.step_done()
            if on_step is not None:
                on_step(k, step)

        latent = denoise_chunk(
            runtime.forward_fn,
            cond,
            guided_fn_builder=runtime.guided_fn_builder,
            sampler=cfg.sampler,
            seed=job.input.seed,
            chunk_index=k,
            fps=job.input.fps,
            dtype=runtime.dtype,
            device=runtime.device,
            observer=observe,
        )
        if runtime.is_lead:
            with timer.stage("decode"):
                frames = decode_uint8(latent).cpu().numpy()  # [121, H, W, 3]
            lead.frames.append(frames if k == 0 else frames[1:])
            lead.latents.append(latent.float().cpu())
            panels = min(num_chunks, cfg.model.frame_buffer_max)  # the official padding width (spec 1.4 step 6)
            lead.previews.append(preview_panel(conditioner.last_warps[0], panels=panels, drop_first=k > 0))
            if k + 1 < num_chunks:
                with timer.stage("write"):
                    partial.save(k + 1, lead.snapshot(conditioner))
    return lead


def write_video_outputs(job: VideoJob, lead: LeadState, *, cfg: RunConfig, record: dict, timer: StageTimer) -> Path:
    """The mp4, the optional cache preview and latents, then the JSON record last (its presence marks completion)."""
    stem = job.stem(cfg.output.dir)
    stem.parent.mkdir(parents=True, exist_ok=True)
    video = np.concatenate(lead.frames)
    with timer.stage("write"):
        write_mp4(stem.with_suffix(".mp4"), video, fps=job.input.fps)
        if cfg.output.save_buffer:
            preview = np.concatenate([np.concatenate(lead.previews), video], axis=2)  # renders left of the video
            write_mp4(stem.with_name(stem.name + "_cache.mp4"), preview, fps=job.input.fps)
        if cfg.output.save_latents:
            write_safetensors(stem.with_name(stem.name + "_latents.safetensors"), {f"chunk{i}": t for i, t in enumerate(lead.latents)})
    record = {**record, **timer.record(), "frames": int(video.shape[0])}
    write_json(stem.with_suffix(".json"), record)
    PartialState(stem, "").remove()
    return stem.with_suffix(".mp4")


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
