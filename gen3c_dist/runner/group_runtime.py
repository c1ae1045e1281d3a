"""This process's part in the run: process group, layout, models, and the per-video runtime.

A *replica* is the cfg x context-parallel block of ranks that makes one video together; its lowest rank is the
lead. The lead alone loads the conditioning models, computes the conditioning, decodes and writes; the others
receive the conditioning in one broadcast and take their share of every DiT forward.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from typing import Any, Callable, Optional, TypeVar

import torch

from gen3c_dist.config import RunConfig
from gen3c_dist.runner.conditioning_stage import ChunkConditioning, VideoConditioner, conditioning_shapes
from gen3c_dist.runner.jobs import VideoJob
from gen3c_dist.runner.timing import StageTimer
from gen3c_dist.runner.video import GroupRuntime, generate_video, write_video_outputs
from gen3c_dist.sampling.guidance import OFFICIAL, serial_guided_fn

logger = logging.getLogger("gen3c_dist")
T = TypeVar("T")


@dataclasses.dataclass
class LoadedModels:
    runtime: GroupRuntime
    conditioning: Any  # ConditioningModels on the lead, None elsewhere


class Group:
    def __init__(self, cfg: RunConfig) -> None:
        from gen3c_dist.parallel.distributed import init_distributed
        from gen3c_dist.parallel.layout import plan_layout

        self.env = init_distributed(cfg.distributed)
        self.rank = self.env.rank
        guidance_runs_both = cfg.sampler.guidance_policy == OFFICIAL or cfg.sampler.guidance != 1.0
        self.layout = self.run_checked(
            lambda: plan_layout(
                cfg.parallel,
                world_size=self.env.world_size,
                rank=self.rank,
                num_heads=cfg.model.num_heads,
                guidance_runs_both=guidance_runs_both,
            )
        )
        if self.layout.note:
            logger.warning(self.layout.note)
        from gen3c_dist.parallel.groups import attach_process_groups

        self.layout = attach_process_groups(self.layout, timeout_s=cfg.distributed.timeout_s)
        self.groups = self.layout.groups

    # ---- agreement across ranks ---------------------------------------------------------------------------
    @property
    def is_lead(self) -> bool:
        return self.layout.is_replica_lead

    def run_checked(self, fn: Callable[[], T]) -> T:
        """Run a check on every rank; if it fails on any rank, every rank raises the lowest failing rank's message."""
        error: Optional[str] = None
        result = None
        try:
            result = fn()
        except ValueError as err:
            error = str(err)
        if self.env.distributed:
            import torch.distributed as dist

            errors: list[Optional[str]] = [None] * self.env.world_size
            dist.all_gather_object(errors, error)
            failed = [(r, e) for r, e in enumerate(errors) if e is not None]
            if failed:
                rank, message = failed[0]
                raise ValueError(message if rank == self.rank or error == message else f"{message} (reported by rank {rank})")
        elif error is not None:
            raise ValueError(error)
        return result  # type: ignore[return-value]

    def share_int(self, value: Optional[int]) -> int:
        """The replica lead's integer, on every rank of the replica."""
        if not self.env.distributed or self.layout.replica_size == 1:
            return int(value)  # type: ignore[arg-type]
        from gen3c_dist.parallel.broadcast import broadcast_int

        return broadcast_int(value, group=self.groups.replica, src=self.layout.replica_lead, device=self.env.device)

    def close(self) -> None:
        from gen3c_dist.parallel.distributed import shutdown_distributed

        shutdown_distributed(self.env)

    # ---- models and videos --------------------------------------------------------------------------------
    def load_models(self, cfg: RunConfig, jobs: list[VideoJob]) -> LoadedModels:
        from gen3c_dist.runner.models import load_conditioning_models, load_dit_for_run
        from gen3c_dist.runner.session import resolve_dtype

        device = self.env.device if cfg.runtime.device == "auto" else torch.device(cfg.runtime.device)
        dtype = resolve_dtype(cfg, device)
        with torch.inference_mode():
            model = load_dit_for_run(cfg, device=device, dtype=dtype)
        conditioning = load_conditioning_models(cfg, jobs, device=device, dtype=dtype) if self.is_lead else None
        runtime = GroupRuntime(
            is_lead=self.is_lead,
            forward_fn=self._forward_fn(model),
            guided_fn_builder=self._guided_fn_builder(),
            broadcast_conditioning=self._conditioning_broadcaster(cfg, device, dtype),
            share_int=self.share_int,
            device=device,
            dtype=dtype,
        )
        return LoadedModels(runtime=runtime, conditioning=conditioning)

    def _forward_fn(self, model) -> Callable:
        if self.layout.cp == 1:
            return model
        from gen3c_dist.parallel.cp_forward import make_cp_forward

        return make_cp_forward(model, self.layout)

    def _guided_fn_builder(self) -> Callable:
        if self.layout.cfg == 1:
            return serial_guided_fn
        from gen3c_dist.parallel.cfg_parallel import cfg_parallel_guided_fn

        return functools.partial(cfg_parallel_guided_fn, layout=self.layout)

    def _conditioning_broadcaster(self, cfg: RunConfig, device: torch.device, dtype: torch.dtype) -> Callable:
        if not self.env.distributed or self.layout.replica_size == 1:
            return lambda cond: cond
        from gen3c_dist.parallel.broadcast import broadcast_tensors

        shapes = conditioning_shapes(cfg.model, height=cfg.input.height, width=cfg.input.width, text_length=cfg.text.max_length)
        spec = {name: (shape, dtype) for name, shape in shapes.items()}

        def broadcast(cond: Optional[ChunkConditioning]) -> ChunkConditioning:
            tensors = broadcast_tensors(
                None if cond is None else cond.as_dict(), spec, group=self.groups.replica, src=self.layout.replica_lead, device=device
            )
            return ChunkConditioning(**tensors)

        return broadcast

    def run_video(self, cfg: RunConfig, job: VideoJob, models: LoadedModels, *, record_fn: Callable) -> Optional[str]:
        """Make one video; returns an error message for a failed single-process batch line, else None."""
        start = time.perf_counter()
        timer = StageTimer()
        runtime = models.runtime
        conditioner = None
        if self.is_lead:
            conditioner = VideoConditioner(
                job, models=models.conditioning, model_cfg=cfg.model, cache_cfg=cfg.cache, text_cfg=cfg.text,
                checkpoints=cfg.checkpoints, dtype=runtime.dtype, timer=timer,
            )
        progress = _progress_bar(cfg, job, enabled=self.rank == 0 and cfg.runtime.progress)
        try:
            with torch.inference_mode():
                lead = generate_video(
                    job, cfg=cfg, runtime=runtime, conditioner=conditioner,
                    decode_uint8=models.conditioning.tokenizer.decode_to_uint8 if self.is_lead else None,
                    timer=timer, on_step=lambda chunk, step: progress.update(1) if progress else None,
                )
        except (ValueError, RuntimeError) as err:
            if self.env.world_size > 1:
                raise  # another rank may be inside a collective: the fault guard ends the job cleanly
            logger.error("%s failed: %s", job.name, err)
            return str(err)
        finally:
            if progress:
                progress.close()
        if self.is_lead:
            record = record_fn(cfg, job, layout_text=self.layout.describe(), device=runtime.device, dtype=runtime.dtype,
                               wall_s=time.perf_counter() - start)
            path = write_video_outputs(job, lead, cfg=cfg, record=record, timer=timer)
            logger.info("%s: wrote %s (%.1f s)", job.name, path, time.perf_counter() - start)
        return None


def _progress_bar(cfg: RunConfig, job: VideoJob, *, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    chunks = (job.input.num_frames - 1) // 120
    return tqdm(total=chunks * cfg.sampler.steps, desc=f"{job.name}: {chunks} chunk(s) x {cfg.sampler.steps} steps", unit="step")


def start_group(cfg: RunConfig) -> Group:
    return Group(cfg)
