"""The lead's output files for one video, fed chunk by chunk (on the background writer when overlap is on).

Each chunk's frames go into the streaming mp4 (and its renders into the preview mp4) as soon as the chunk is
decoded; :meth:`VideoOutputs.finish` closes them, writes the latents, and writes the JSON record last, whose
presence marks the video complete. Nothing gets its final name before it is whole (``Mp4Stream`` renames).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from gen3c_dist.config import RunConfig
from gen3c_dist.runner.jobs import VideoJob
from gen3c_dist.runner.outputs import Mp4Stream, write_json, write_safetensors
from gen3c_dist.runner.partial import ChunkResult, PartialState


class VideoOutputs:
    def __init__(self, job: VideoJob, cfg: RunConfig) -> None:
        self.stem = job.stem(cfg.output.dir)
        self.stem.parent.mkdir(parents=True, exist_ok=True)
        self.save_latents = cfg.output.save_latents
        self.video = Mp4Stream(self.stem.with_suffix(".mp4"), fps=job.input.fps)
        self.preview = Mp4Stream(self.stem.with_name(self.stem.name + "_cache.mp4"), fps=job.input.fps) if cfg.output.save_buffer else None
        self.latents: list[torch.Tensor] = []

    def add_chunk(self, chunk: ChunkResult) -> None:
        self.video.append(chunk.frames)
        if self.preview is not None:
            self.preview.append(np.concatenate([chunk.preview, chunk.frames], axis=2))  # renders left of the video
        self.latents.append(chunk.latent)

    def finish(self, record_fn: Callable[[int], dict]) -> list[Path]:
        """Close every file; ``record_fn(frames)`` builds the record once everything else is written.

        Returns the paths written, the record last."""
        written = [self.video.finish()]
        if self.preview is not None:
            written.append(self.preview.finish())
        if self.save_latents:
            latents = self.stem.with_name(self.stem.name + "_latents.safetensors")
            write_safetensors(latents, {f"chunk{i}": t for i, t in enumerate(self.latents)})
            written.append(latents)
        record = self.stem.with_suffix(".json")
        write_json(record, record_fn(self.video.frames))
        PartialState(self.stem, "").remove()
        return written + [record]

    def abort(self) -> None:
        self.video.abort()
        if self.preview is not None:
            self.preview.abort()
