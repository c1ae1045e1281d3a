"""This process's place in the job: the process group, the layout, and every collective the runner makes.

A *replica* is the cfg x context-parallel block of ranks that makes one video together; its lowest rank is the
lead. Everything here is called by every rank of the world (``run_checked``, ``choose_layout``) or of the
replica (``share_int``, ``gather_rank_lines``) in the same order. Per-run decisions that depend on the layout
and the machine (device, dtype, overlap, whether the replica shares the tokenizer work) are resolved once, in
:func:`resolve_settings`, and passed down as :class:`RunSettings`.
"""

from __future__ import annotations

import dataclasses
import logging
import resource
import sys
from typing import Callable, Optional, TypeVar

import torch
import torch.distributed as dist

from gen3c_dist.config import DType, RunConfig, TokenizerPlacement
from gen3c_dist.errors import InputError, SharedInputError
from gen3c_dist.parallel.auto_layout import LayoutChoice, LayoutRequest, choose_layout
from gen3c_dist.parallel.broadcast import broadcast_int
from gen3c_dist.parallel.comm_counter import CommCounter
from gen3c_dist.parallel.distributed import DistEnv, init_distributed, shutdown_distributed
from gen3c_dist.parallel.layout import ParallelLayout, plan_layout
from gen3c_dist.parallel.mesh import attach_process_groups
from gen3c_dist.perf.hardware import gpu_spec, gpu_spec_for_name
from gen3c_dist.perf.projection import run_chunk_cost
from gen3c_dist.sampling.guidance import runs_both_passes
from gen3c_dist.shapes import num_chunks

logger = logging.getLogger("gen3c_dist")
T = TypeVar("T")
DTYPES = {DType.bfloat16: torch.bfloat16, DType.float32: torch.float32, DType.float16: torch.float16}


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """Resolved once per run, on every rank alike."""

    device: torch.device
    dtype: torch.dtype
    overlap: bool  # background DiT load and writes (runtime.overlap; null: on with CUDA, off on the CPU)
    tokenizer_shared: bool  # parallel.tokenizer=group with more than one rank in the replica to share it


def resolve_device(cfg: RunConfig, env: DistEnv) -> torch.device:
    return env.device if cfg.runtime.device == "auto" else torch.device(cfg.runtime.device)


def resolve_dtype(cfg: RunConfig, device: torch.device) -> torch.dtype:
    if cfg.runtime.dtype == DType.auto:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return DTYPES[cfg.runtime.dtype]


def resolve_settings(cfg: RunConfig, env: DistEnv, layout: ParallelLayout) -> RunSettings:
    device = resolve_device(cfg, env)
    dtype = resolve_dtype(cfg, device)
    overlap = device.type == "cuda" if cfg.runtime.overlap is None else bool(cfg.runtime.overlap)
    shared = cfg.parallel.tokenizer == TokenizerPlacement.group and env.distributed and layout.replica_size > 1
    return RunSettings(device=device, dtype=dtype, overlap=overlap, tokenizer_shared=shared)


def choose_run_layout(cfg: RunConfig, pending_chunks: tuple[int, ...], env: DistEnv) -> LayoutChoice:
    """The layout for this run's pending videos, from the projection's cost model on this machine's GPU.

    Off CUDA, or on a GPU the datasheet table lacks, the H100 SXM model stands in: the choice depends on how
    layouts compare, which the stand-in preserves, not on absolute seconds.
    """
    gpu = gpu_spec_for_name(torch.cuda.get_device_name(env.device)) if env.device.type == "cuda" else None
    both = runs_both_passes(cfg.sampler.guidance_policy, cfg.sampler.guidance)
    cost = run_chunk_cost(cfg.model, height=cfg.input.height, width=cfg.input.width, steps=cfg.sampler.steps,
                          guidance_runs_both=both, tokenizer=cfg.parallel.tokenizer,
                          gpus_per_node=env.local_world_size, gpu=gpu or gpu_spec("h100_sxm"))
    request = LayoutRequest(world_size=env.world_size, ranks_per_node=env.local_world_size,
                            num_heads=cfg.model.num_heads, guidance_runs_both=both, video_chunks=pending_chunks)
    return choose_layout(cfg.parallel, request, cost)


class Replica:
    """The process group, and after :meth:`choose_layout` the layout, its groups and the run's settings."""

    def __init__(self, cfg: RunConfig) -> None:
        self.env = init_distributed(cfg.distributed)
        self.rank = self.env.rank
        self.layout: Optional[ParallelLayout] = None
        self.layout_choice: Optional[LayoutChoice] = None
        self.settings: Optional[RunSettings] = None
        self.counter = CommCounter()  # DiT traffic of this rank, reset per video
        self.tokenizer_counter = CommCounter()  # render/encode/decode traffic (parallel.tokenizer=group)

    # ---- the layout -----------------------------------------------------------------------------------------
    def choose_layout(self, cfg: RunConfig, pending_chunks: tuple[int, ...]) -> None:
        """Choose the layout (``parallel.layout=auto`` fills the unset degrees) and build it on every rank.

        Every rank computes the choice, so a refusal is the same message everywhere; rank 0's result is used,
        so a per-rank input (the GPU name the cost model reads) cannot give two ranks different layouts.
        """
        choice = self.run_checked(lambda: choose_run_layout(cfg, pending_chunks, self.env))
        self.layout_choice = self.broadcast_object(choice)
        both = runs_both_passes(cfg.sampler.guidance_policy, cfg.sampler.guidance)
        layout = self.run_checked(lambda: plan_layout(self.layout_choice.config, world_size=self.env.world_size,
                                                      rank=self.rank, num_heads=cfg.model.num_heads,
                                                      guidance_runs_both=both))
        if layout.note and self.rank == 0:
            logger.warning(layout.note)
        self.layout = attach_process_groups(layout, timeout_s=cfg.distributed.timeout_s)
        self.settings = resolve_settings(cfg, self.env, self.layout)
        logger.info("layout: %s; %s", self.layout.describe(), self.layout_choice.reason)

    @property
    def is_lead(self) -> bool:
        return self.layout.is_replica_lead

    @property
    def group(self) -> Optional[dist.ProcessGroup]:
        """The replica's process group; None for a replica of one rank."""
        return None if not self.env.distributed or self.layout.replica_size == 1 else self.layout.groups.replica

    # ---- agreement across ranks ---------------------------------------------------------------------------
    def run_checked(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on every rank; if it fails on any rank, every rank raises, naming the lowest failing rank.

        A bad input becomes the same :class:`SharedInputError` everywhere. Any other exception is re-raised
        with its traceback on the rank where it happened, and as a RuntimeError naming that rank on the others,
        so no rank is left waiting in a later collective.
        """
        error: Optional[tuple[bool, str]] = None
        result, own = None, None
        try:
            result = fn()
        except InputError as err:
            error = (True, str(err))
        except Exception as err:
            if not self.env.distributed:
                raise
            error, own = (False, f"{type(err).__name__}: {err}"), err
        if not self.env.distributed:
            if error is not None:
                raise SharedInputError(error[1])
            return result  # type: ignore[return-value]
        errors: list[Optional[tuple[bool, str]]] = [None] * self.env.world_size
        dist.all_gather_object(errors, error)
        failed = [(r, e) for r, e in enumerate(errors) if e is not None]
        if not failed:
            return result  # type: ignore[return-value]
        if own is not None:
            raise own
        rank, (is_input, message) = failed[0]
        if not is_input:
            raise RuntimeError(f"rank {rank} failed: {message}")
        same = rank == self.rank or (error is not None and error[1] == message)
        raise SharedInputError(message if same else f"{message} (reported by rank {rank})")

    def broadcast_object(self, value: T) -> T:
        """World rank 0's ``value`` (small, picklable: it never crosses a trust boundary) on every rank."""
        if not self.env.distributed:
            return value
        shared = [value]
        dist.broadcast_object_list(shared, src=0)
        return shared[0]

    def share_int(self, value: Optional[int]) -> int:
        """The replica lead's integer, on every rank of the replica."""
        if self.group is None:
            return int(value)  # type: ignore[arg-type]
        return broadcast_int(value, group=self.group, src=self.layout.replica_lead, device=self.env.device)

    def gather_rank_lines(self, steps: int) -> list[dict]:
        """Every replica rank's peak memory and DiT / tokenizer traffic, in replica order (for the record)."""
        line = {
            "rank": self.rank,
            "peak_memory_bytes": peak_memory_bytes(self.settings.device),
            "comm_bytes_per_step": self.counter.mean_per_step(steps),
            "tokenizer_comm_bytes": self.tokenizer_counter.totals(),  # whole video, by kind
        }
        if self.group is None:
            return [line]
        lines: list[Optional[dict]] = [None] * self.layout.replica_size
        dist.all_gather_object(lines, line, group=self.group)
        return [entry for entry in lines if entry is not None]

    def close(self) -> None:
        """Wait for every rank of the job (a rank with no video waits here, outside any collective), then leave."""
        shutdown_distributed(self.env)


def pending_chunks(jobs: list) -> tuple[int, ...]:
    return tuple(num_chunks(job.input.num_frames) for job in jobs)


def peak_memory_bytes(device: torch.device) -> int:
    """CUDA: the allocator's peak on this device. CPU: the process's peak resident set size."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB on Linux
