"""One invocation of the runner: validate everything, load models, make every assigned video, report.

Order matters for the promises the runner makes: the layout, the inputs, the output folder and the checkpoint
paths are checked on every rank before any model loads, so a bad input stops every rank with the same message;
outputs are written by the lead of each data-parallel replica only; a batch line that fails is reported and the
next one runs.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
import sys
import time

import torch

from gen3c_dist.config import RunConfig
from gen3c_dist.runner.jobs import RejectedLine, VideoJob, batch_jobs, single_job, validate_job
from gen3c_dist.runner.outputs import check_writable_dir, write_json

logger = logging.getLogger("gen3c_dist")

TINY_MODEL_WARNING = (
    "this run uses seeded RANDOM weights (checkpoints.random_weights=true): the generated frames are not "
    "meaningful; the cache renders (<name>_cache.mp4) are"
)


def setup_logging(rank: int) -> None:
    level = logging.INFO if rank == 0 else logging.WARNING
    logging.basicConfig(level=level, format=f"[rank {rank}] %(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True)


def resolve_dtype(cfg: RunConfig, device: torch.device) -> torch.dtype:
    names = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float32": torch.float32, "fp32": torch.float32, "float16": torch.float16}
    if cfg.runtime.dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if cfg.runtime.dtype not in names:
        raise ValueError(f"runtime.dtype={cfg.runtime.dtype!r} is not one of auto, {', '.join(names)}")
    return names[cfg.runtime.dtype]


def input_checks() -> list:
    """Per-job checks that read file headers only (cheap enough for every rank)."""
    from gen3c_dist.conditioning.depth_file import load_depth_file
    from gen3c_dist.conditioning.input_image import validate_input_image
    from gen3c_dist.geometry.camera import load_trajectory_file

    def image(job: VideoJob) -> None:
        validate_input_image(job.input.image)

    def depth(job: VideoJob) -> None:
        if job.input.depth is not None:
            load_depth_file(job.input.depth, png_scale=job.input.depth_png_scale)

    def trajectory(job: VideoJob) -> None:
        if job.trajectory.file is not None:
            load_trajectory_file(job.trajectory.file, num_frames=job.input.num_frames)

    def size(job: VideoJob) -> None:
        if job.input.height % 16 or job.input.width % 16 or job.input.height < 16 or job.input.width < 16:
            raise ValueError(f"input.height/width = {job.input.height}x{job.input.width} must be positive multiples of 16 (tokenizer x8, patch x2)")

    return [size, image, depth, trajectory]


def collect_jobs(cfg: RunConfig) -> tuple[list[VideoJob], list[RejectedLine]]:
    """Validated jobs. A single run raises on a bad input; a batch rejects the bad lines and keeps the rest."""
    checks = input_checks()
    if cfg.batch.jsonl is None:
        job = single_job(cfg)
        validate_job(job, output_dir=cfg.output.dir, checks=checks)
        return [job], []
    parsed, rejected = batch_jobs(cfg)
    jobs = []
    for job in parsed:
        try:
            validate_job(job, output_dir=cfg.output.dir, checks=checks)
            jobs.append(job)
        except ValueError as err:
            rejected.append(RejectedLine(job.index, f"batch line {job.index + 1} ({job.name}): {err}"))
    return jobs, sorted(rejected, key=lambda r: r.index)


def is_complete(job: VideoJob, cfg: RunConfig) -> bool:
    """The JSON record is written last, so its presence (with the mp4) means the video is complete."""
    stem = job.stem(cfg.output.dir)
    return stem.with_suffix(".json").exists() and stem.with_suffix(".mp4").exists()


def versions() -> dict[str, str]:
    import numpy

    import gen3c_dist

    found = {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__}
    found["gen3c_dist"] = getattr(gen3c_dist, "__version__", "0.1.0")
    found["cuda"] = str(torch.version.cuda)
    return found


def run_record(cfg: RunConfig, job: VideoJob, *, layout_text: str, device: torch.device, dtype: torch.dtype, wall_s: float) -> dict:
    return {
        "name": job.name,
        "seed": job.input.seed,
        "job": dataclasses.asdict(job),
        "config": dataclasses.asdict(cfg),
        "versions": versions(),
        "parallel_layout": layout_text,
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "random_weights": cfg.checkpoints.random_weights,
        "wall_s": round(wall_s, 3),
    }


def run_session(cfg: RunConfig) -> int:
    """Exit status: 0 when every assigned video was made (or already complete), 1 if any batch line failed."""
    from gen3c_dist.runner.group_runtime import start_group

    from gen3c_dist.parallel.faults import fault_guard

    setup_logging(int(os.environ.get("RANK", "0")))  # before the group exists, so layout errors carry the rank
    group = start_group(cfg)
    setup_logging(group.rank)
    try:
        # An exception on one rank is reported through the store; the others stop within the collective
        # timeout with a message naming that rank, instead of waiting forever.
        with fault_guard(group.env):
            return _run(cfg, group)
    finally:
        group.close()


def _run(cfg: RunConfig, group) -> int:
    jobs, rejected = group.run_checked(lambda: collect_jobs(cfg))
    group.run_checked(lambda: check_writable_dir(cfg.output.dir))
    from gen3c_dist.runner.models import preflight_checkpoints

    group.run_checked(lambda: preflight_checkpoints(cfg, jobs))
    for line in rejected:
        logger.error("skipping %s", line.error)
    if cfg.checkpoints.random_weights:
        logger.warning(TINY_MODEL_WARNING)
    failures = list(rejected)
    my_jobs = [job for i, job in enumerate(jobs) if i % group.layout.data == group.layout.data_index]
    pending = []
    for job in my_jobs:
        if cfg.output.resume and group.share_int(int(is_complete(job, cfg)) if group.is_lead else None):
            logger.info("%s: complete output exists, skipped", job.name)
        else:
            pending.append(job)
    if not pending:
        return _report(cfg, group, jobs, failures)  # nothing to make: no model is loaded
    models = group.load_models(cfg, pending)
    try:
        for job in pending:
            error = group.run_video(cfg, job, models, record_fn=run_record)
            if error is not None:
                failures.append(RejectedLine(job.index, f"{job.name}: {error}"))
                if cfg.batch.jsonl is None:
                    raise RuntimeError(error)
        models.writer.drain()  # the last video's files are complete before the batch report and exit
    finally:
        models.writer.close()
    return _report(cfg, group, jobs, failures)


def _report(cfg: RunConfig, group, jobs: list[VideoJob], failures: list[RejectedLine]) -> int:
    if cfg.batch.jsonl is not None and group.rank == 0:
        report = {"rejected_or_failed": [dataclasses.asdict(f) for f in failures], "jobs": len(jobs), "time": time.time()}
        write_json(check_writable_dir(cfg.output.dir) / f"batch_report_shard{cfg.batch.shard_index}.json", report)
    return 1 if failures else 0
