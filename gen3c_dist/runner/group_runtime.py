"""This process's part in the run: process group, layout, models, and the per-video runtime.

A *replica* is the cfg x context-parallel block of ranks that makes one video together; its lowest rank is the
lead. The lead alone loads depth, text and (with ``parallel.tokenizer=lead``) the tokenizer, computes the
conditioning and writes; the others take their share of every DiT forward (and, with ``parallel.tokenizer=group``,
of the tokenizer's encodes and decode). The DiT loads in a background thread while the lead's conditioning runs
(``runtime.overlap``), and outputs are written by a background writer while the next chunk or video starts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import sys
import time
from typing import Any, Callable, Optional, TypeVar

import torch

from gen3c_dist.config import GuidancePolicy, RunConfig, SamplerConfig
from gen3c_dist.errors import InputError, SharedInputError
from gen3c_dist.parallel.comm_counter import CommCounter
from gen3c_dist.runner.background import Background, BackgroundWriter
from gen3c_dist.runner.chunk_steps import GroupChunkSteps, LeadChunkSteps, conditioning_broadcaster
from gen3c_dist.runner.conditioning_stage import VideoConditioner
from gen3c_dist.runner.jobs import VideoJob, check_num_frames
from gen3c_dist.perf.flops import dit_tokens, latent_thw
from gen3c_dist.runner.rank_report import gather_rank_lines, rank_line
from gen3c_dist.runner.timing import StageTimer
from gen3c_dist.runner.video import GroupRuntime, generate_video
from gen3c_dist.runner.video_outputs import VideoOutputs
from gen3c_dist.sampling.guidance import serial_guided_fn

logger = logging.getLogger("gen3c_dist")
T = TypeVar("T")


@dataclasses.dataclass
class LoadedModels:
    runtime: GroupRuntime
    conditioning: Any  # ConditioningModels on the lead, None elsewhere
    dit: Background  # the DiT (or its context-parallel forward), loading in the background
    writer: BackgroundWriter
    load_s: float  # seconds spent loading on the main thread (conditioning models)


class Group:
    """This process in the job: its process group, and (after :meth:`choose_layout`) its layout and groups."""

    def __init__(self, cfg: RunConfig) -> None:
        from gen3c_dist.parallel.distributed import init_distributed

        self.env = init_distributed(cfg.distributed)
        self.rank = self.env.rank
        self.layout = None
        self.layout_choice = None
        self.counter = CommCounter()  # DiT traffic of this rank, reset per video
        self.tokenizer_counter = CommCounter()  # tokenizer encodes/decode traffic (parallel.tokenizer=group)
        self.written: dict[str, list] = {}  # job name -> files written (filled by the background writer)
        self.stage_totals: dict[str, float] = {}  # seconds per stage over this rank's videos

    def choose_layout(self, cfg: RunConfig, pending: list[VideoJob]) -> None:
        """Choose the layout (``parallel.layout=auto`` fills the unset degrees) and build it on every rank.

        Rank 0's choice is shared, so a per-rank input (the GPU name the cost model reads) can never give two
        ranks different layouts.
        """
        from gen3c_dist.parallel.groups import attach_process_groups
        from gen3c_dist.parallel.layout import plan_layout

        # Every rank runs the choice (so a refusal is the same message everywhere); rank 0's result is used.
        choice = self.run_checked(lambda: choose_run_layout(cfg, pending, self.env))
        if self.env.distributed:
            import torch.distributed as dist

            shared = [choice]
            dist.broadcast_object_list(shared, src=0)
            choice = shared[0]
        self.layout_choice = choice
        layout = self.run_checked(
            lambda: plan_layout(choice.config, world_size=self.env.world_size, rank=self.rank,
                                num_heads=cfg.model.num_heads, guidance_runs_both=guidance_runs_both(cfg.sampler))
        )
        if layout.note:
            if self.rank == 0:
                logger.warning(layout.note)
        self.layout = attach_process_groups(layout, timeout_s=cfg.distributed.timeout_s)
        self.groups = self.layout.groups
        logger.info("layout: %s; %s", self.layout.describe(), choice.reason)

    # ---- agreement across ranks ---------------------------------------------------------------------------
    @property
    def is_lead(self) -> bool:
        return self.layout.is_replica_lead

    @property
    def replica_group(self):
        return None if not self.env.distributed or self.layout.replica_size == 1 else self.groups.replica

    def run_checked(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on every rank; if it fails on any rank, every rank raises, naming the lowest failing rank.

        A bad input (:class:`InputError`) becomes the same InputError everywhere. Any other exception is
        re-raised with its traceback on the rank where it happened, and as a RuntimeError naming that rank on
        the others, so no rank is left waiting in a later collective.
        """
        error: Optional[tuple[bool, str]] = None
        result = None
        try:
            result = fn()
        except InputError as err:
            error = (True, str(err))
        except Exception as err:
            error = (False, f"{type(err).__name__}: {err}")
            if not self.env.distributed:
                raise
            own = err
        if self.env.distributed:
            import torch.distributed as dist

            errors: list[Optional[tuple[bool, str]]] = [None] * self.env.world_size
            dist.all_gather_object(errors, error)
            failed = [(r, e) for r, e in enumerate(errors) if e is not None]
            if failed:
                rank, (is_input, message) = failed[0]
                if error is not None and not error[0]:
                    raise own
                if not is_input:
                    raise RuntimeError(f"rank {rank} failed: {message}")
                raise SharedInputError(message if rank == self.rank or (error and error[1] == message)
                                       else f"{message} (reported by rank {rank})")
        elif error is not None:
            raise SharedInputError(error[1])
        return result  # type: ignore[return-value]

    def share_int(self, value: Optional[int]) -> int:
        """The replica lead's integer, on every rank of the replica."""
        if self.replica_group is None:
            return int(value)  # type: ignore[arg-type]
        from gen3c_dist.parallel.broadcast import broadcast_int

        return broadcast_int(value, group=self.replica_group, src=self.layout.replica_lead, device=self.env.device)

    def close(self) -> None:
        """Wait for every rank of the job (a rank with no video waits here, outside any collective), then leave."""
        from gen3c_dist.parallel.distributed import shutdown_distributed

        shutdown_distributed(self.env)

    # ---- models ---------------------------------------------------------------------------------------------
    def load_models(self, cfg: RunConfig, jobs: list[VideoJob]) -> LoadedModels:
        from gen3c_dist.runner.models import load_conditioning_models, load_dit_for_run, load_tokenizer_models

        device, dtype = self.device_and_dtype(cfg)
        overlap = resolve_overlap(cfg, device)
        # The DiT's file reads and copies overlap the lead's model loads and chunk-0 conditioning.
        dit = Background(
            lambda: self._forward_fn(load_dit_for_run(cfg, device=device, dtype=dtype), cfg, device, dtype),
            enabled=overlap,
        )
        start = time.perf_counter()
        if self.is_lead:
            conditioning = load_conditioning_models(cfg, jobs, device=device, dtype=dtype)
        elif self.tokenizer_shared(cfg):
            conditioning = load_tokenizer_models(cfg, device=device, dtype=dtype)
        else:
            conditioning = None
        runtime = GroupRuntime(
            is_lead=self.is_lead, forward=dit.result, guided_fn_builder=self._guided_fn_builder(),
            share_int=self.share_int, device=device, dtype=dtype,
        )
        writer = BackgroundWriter(enabled=overlap)
        return LoadedModels(runtime, conditioning, dit, writer, load_s=time.perf_counter() - start)

    def device_and_dtype(self, cfg: RunConfig) -> tuple[torch.device, torch.dtype]:
        from gen3c_dist.runner.session import resolve_dtype

        device = self.env.device if cfg.runtime.device == "auto" else torch.device(cfg.runtime.device)
        return device, resolve_dtype(cfg, device)

    def check_speed_options(self, cfg: RunConfig) -> None:
        """Refused speed options (CUDA graphs with CP, compile on the CPU, ...) stop every rank before loading."""
        from gen3c_dist.parallel.parallelize import check_speed_options

        device, dtype = self.device_and_dtype(cfg)
        self.run_checked(lambda: check_speed_options(cfg.runtime, device=device, dtype=dtype,
                                                     head_dim=cfg.model.head_dim, cp_size=self.layout.cp))

    def _forward_fn(self, model, cfg: RunConfig, device: torch.device, dtype: torch.dtype) -> Callable:
        """This rank's DiT forward for the layout, with the configured kernel/compile/graph options."""
        from gen3c_dist.parallel.parallelize import parallelize_dit

        forward_fn, notes = parallelize_dit(model, self.layout, cfg.runtime, device=device, dtype=dtype,
                                            counter=self.counter)
        for note in notes:
            logger.info(note)
        return forward_fn

    def _guided_fn_builder(self) -> Callable:
        if self.layout.cfg == 1:
            return serial_guided_fn
        from gen3c_dist.parallel.cfg_parallel import cfg_parallel_guided_fn

        return functools.partial(cfg_parallel_guided_fn, layout=self.layout, counter=self.counter)

    def tokenizer_shared(self, cfg: RunConfig) -> bool:
        """``parallel.tokenizer=group`` with more than one rank to share the tokenizer work."""
        return cfg.parallel.tokenizer == "group" and self.replica_group is not None

    def _chunk_steps(self, cfg: RunConfig, models: LoadedModels, conditioner: Optional[VideoConditioner], timer: StageTimer):
        runtime, cond_models = models.runtime, models.conditioning
        if self.tokenizer_shared(cfg):
            return GroupChunkSteps(
                cfg, conditioner=conditioner, tokenizer=cond_models.tokenizer, swap=cond_models.swap,
                group=self.replica_group, src=self.layout.replica_lead, share_int=self.share_int,
                device=runtime.device, dtype=runtime.dtype, timer=timer, counter=self.tokenizer_counter,
            )
        broadcast = conditioning_broadcaster(cfg, group=self.replica_group, src=self.layout.replica_lead,
                                             size=self.layout.replica_size, device=runtime.device, dtype=runtime.dtype)
        return LeadChunkSteps(
            conditioner=conditioner, tokenizer=cond_models.tokenizer if cond_models else None,
            swap=cond_models.swap if cond_models else None, broadcast=broadcast, timer=timer,
        )

    # ---- videos ---------------------------------------------------------------------------------------------
    def run_video(self, cfg: RunConfig, job: VideoJob, models: LoadedModels, *, record_fn: Callable) -> Optional[str]:
        """Make one video; returns an error message for a failed single-process batch line, else None."""
        start = time.perf_counter()
        timer, runtime, writer = StageTimer(), models.runtime, models.writer
        writer_start = writer.busy_s  # this video's share of the writer's time, inline or in the background
        self.counter.reset()
        self.tokenizer_counter.reset()
        conditioner = outputs = None
        if self.is_lead:
            conditioner = VideoConditioner(
                job, models=models.conditioning, model_cfg=cfg.model, cache_cfg=cfg.cache, text_cfg=cfg.text,
                checkpoints=cfg.checkpoints, dtype=runtime.dtype, timer=timer,
            )
            outputs = VideoOutputs(job, cfg)
        progress = _progress_bar(cfg, job, enabled=self.rank == 0 and cfg.runtime.progress)
        try:
            with torch.inference_mode(), _logs_around(progress):
                generate_video(
                    job, cfg=cfg, runtime=runtime, steps=self._chunk_steps(cfg, models, conditioner, timer),
                    conditioner=conditioner, outputs=outputs, writer=writer, timer=timer,
                    on_step=lambda chunk, step: progress.update(1) if progress else None,
                )
        except (ValueError, RuntimeError) as err:
            if outputs is not None:
                _abort(writer, outputs)
            if self.env.world_size > 1:
                raise  # another rank may be inside a collective: the fault guard ends the job cleanly
            logger.error("%s failed: %s", job.name, err)
            return str(err)
        finally:
            if progress:
                progress.close()
        steps = len(timer.step_seconds)
        line = rank_line(self.rank, runtime.device, self.counter, steps)
        line["tokenizer_comm_bytes"] = self.tokenizer_counter.totals()  # whole video, by kind
        lines = gather_rank_lines(line, group=self.replica_group, size=self.layout.replica_size)
        if outputs is not None:
            extra = self._record_extra(cfg, models, lines)

            def record(frames: int) -> dict:
                timer.seconds["write"] = writer.busy_s - writer_start
                base = record_fn(cfg, job, layout_text=self.layout.describe(), device=runtime.device,
                                 dtype=runtime.dtype, wall_s=time.perf_counter() - start)
                return {**base, **timer.record(), **extra, "frames": frames}

            def finish() -> None:
                self.written[job.name] = outputs.finish(record)
                logger.info("%s: complete (%.1f s)", job.name, time.perf_counter() - start)
                self._add_stage_totals(timer)

            writer.submit(finish)
        else:
            self._add_stage_totals(timer)
        return None

    def _add_stage_totals(self, timer: StageTimer) -> None:
        for stage, seconds in timer.seconds.items():
            self.stage_totals[stage] = round(self.stage_totals.get(stage, 0.0) + seconds, 4)

    def _record_extra(self, cfg: RunConfig, models: LoadedModels, lines: list[dict]) -> dict:
        layout = self.layout
        return {
            "tokens": dit_tokens(cfg.model, latent_thw(cfg.input.height, cfg.input.width)),
            "world_size": self.env.world_size,
            "layout": {"data": layout.data, "cfg": layout.cfg, "ulysses": layout.ulysses, "ring": layout.ring,
                       "cp": layout.cp, "attention": layout.attention, "tokenizer": cfg.parallel.tokenizer,
                       "overlap": models.writer.enabled, "mode": cfg.parallel.layout,
                       "requested": {k: getattr(cfg.parallel, k) for k in ("data", "cfg", "ulysses", "ring")},
                       "reason": self.layout_choice.reason,
                       "ranks_per_node": self.env.local_world_size},
            "ranks": lines,
            "load_s": {"conditioning_models": round(models.load_s, 4), "dit": round(models.dit.seconds, 4)},
        }


def resolve_overlap(cfg: RunConfig, device: torch.device) -> bool:
    """``runtime.overlap``; null means on with CUDA (idle host cores, I/O-bound loads) and off on the CPU."""
    return device.type == "cuda" if cfg.runtime.overlap is None else bool(cfg.runtime.overlap)


def _abort(writer: BackgroundWriter, outputs: VideoOutputs) -> None:
    try:
        writer.drain()
    except Exception as err:  # the run already failed; the write error is secondary
        logger.warning("a background write also failed: %s", err)
    outputs.abort()


def _progress_bar(cfg: RunConfig, job: VideoJob, *, enabled: bool):
    """A tqdm bar on rank 0, only when stderr is a terminal: in a log file, a bar is a wall of carriage returns."""
    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    chunks = (job.input.num_frames - 1) // 120
    return tqdm(total=chunks * cfg.sampler.steps, desc=f"{job.name}: {chunks} chunk(s) x {cfg.sampler.steps} steps", unit="step")


def _logs_around(progress) -> contextlib.AbstractContextManager:
    """While a bar is drawn, log lines go through tqdm, so they print above the bar instead of through it."""
    if progress is None:
        return contextlib.nullcontext()
    from tqdm.contrib.logging import logging_redirect_tqdm

    return logging_redirect_tqdm()


def start_group(cfg: RunConfig) -> Group:
    return Group(cfg)


def guidance_runs_both(sampler: SamplerConfig) -> bool:
    """Whether every step runs the cond and the uncond pass (always, under the official policy; spec 4.5)."""
    return sampler.guidance_policy == GuidancePolicy.official or sampler.guidance != 1.0


def choose_run_layout(cfg: RunConfig, pending: list[VideoJob], env):
    """The layout for this run's pending videos, from the projection's cost model on this machine's GPU.

    Off CUDA, or on a GPU the datasheet table lacks, the H100 SXM model stands in: the choice depends on how
    layouts compare, which the stand-in preserves, not on absolute seconds.
    """
    from gen3c_dist.parallel.auto_layout import LayoutRequest, choose_layout
    from gen3c_dist.perf.hardware import gpu_spec, gpu_spec_for_name
    from gen3c_dist.perf.projection import run_chunk_cost

    gpu = None
    if env.device.type == "cuda":
        gpu = gpu_spec_for_name(torch.cuda.get_device_name(env.device))
    both = guidance_runs_both(cfg.sampler)
    cost = run_chunk_cost(cfg.model, height=cfg.input.height, width=cfg.input.width, steps=cfg.sampler.steps,
                          guidance_runs_both=both, tokenizer=cfg.parallel.tokenizer,
                          gpus_per_node=env.local_world_size, gpu=gpu or gpu_spec("h100_sxm"))
    request = LayoutRequest(world_size=env.world_size, ranks_per_node=env.local_world_size,
                            num_heads=cfg.model.num_heads, guidance_runs_both=both,
                            video_chunks=tuple(check_num_frames(job.input.num_frames) for job in pending))
    return choose_layout(cfg.parallel, request, cost)
