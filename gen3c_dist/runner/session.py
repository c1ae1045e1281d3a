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
import socket
import sys
import time

import torch

from gen3c_dist.config import RunConfig
from gen3c_dist.errors import InputError
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
        raise InputError(f"runtime.dtype={cfg.runtime.dtype!r} is not one of auto, {', '.join(names)}")
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
            raise InputError(f"input.height/width = {job.input.height}x{job.input.width} must be positive multiples of 16 (tokenizer x8, patch x2)")

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


RECORD_SCHEMA_VERSION = 2  # bump when a field of the JSON record changes meaning or goes away


def versions() -> dict[str, str]:
    import numpy

    import gen3c_dist

    found = {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__}
    found["gen3c_dist"] = gen3c_dist.__version__
    found["cuda"] = str(torch.version.cuda)
    commit = gen3c_dist.source_commit()
    if commit is not None:
        found["gen3c_dist_commit"] = commit
    return found


def machine(device: torch.device) -> dict:
    """Where the run happened: host, GPU name and count (none on a CPU run)."""
    info = {"host": socket.gethostname()}
    if device.type == "cuda":
        info["gpu_name"] = torch.cuda.get_device_name(device)
        info["gpu_count"] = torch.cuda.device_count()
    else:
        info["gpu_name"], info["gpu_count"] = None, 0
    return info


def run_record(cfg: RunConfig, job: VideoJob, *, layout_text: str, device: torch.device, dtype: torch.dtype, wall_s: float) -> dict:
    return {
        "schema_version": RECORD_SCHEMA_VERSION,
        "name": job.name,
        "seed": job.input.seed,
        "job": dataclasses.asdict(job),
        "config": dataclasses.asdict(cfg),
        "versions": versions(),
        "machine": machine(device),
        "command_line": [os.path.basename(sys.argv[0]) or "python", *sys.argv[1:]],
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
    pending = _pending_jobs(cfg, group, jobs)
    group.choose_layout(cfg, pending)
    group.check_speed_options(cfg)
    if cfg.checkpoints.random_weights and pending and group.rank == 0:
        logger.warning(TINY_MODEL_WARNING)  # once per run: every model with an unset path gets random weights
    failures = list(rejected)
    # Round-robin over the replicas. A replica with fewer videos (or none) waits at the end, in group.close(),
    # outside any collective, for the others to finish.
    my_jobs = pending[group.layout.data_index::group.layout.data]
    written: list[str] = []
    if my_jobs:
        models = group.load_models(cfg, my_jobs)
        try:
            for job in my_jobs:
                error = group.run_video(cfg, job, models, record_fn=run_record)
                if error is not None:
                    failures.append(RejectedLine(job.index, f"{job.name}: {error}"))
                    if cfg.batch.jsonl is None:
                        raise RuntimeError(error)
            models.writer.drain()  # the last video's files are complete before the batch report and exit
        finally:
            models.writer.close()
        written = [str(path) for job in my_jobs for path in group.written.get(job.name, [])]
    return _report(cfg, group, jobs, failures, written)


def _pending_jobs(cfg: RunConfig, group, jobs: list[VideoJob]) -> list[VideoJob]:
    """The jobs still to make. Rank 0 looks at the output folder and tells every rank, so all agree."""
    if not cfg.output.resume:
        return list(jobs)
    done = group.run_checked(lambda: [is_complete(job, cfg) for job in jobs] if group.rank == 0 else None)
    if group.env.distributed:
        import torch.distributed as dist

        shared = [done]
        dist.broadcast_object_list(shared, src=0)
        done = shared[0]
    for job, complete in zip(jobs, done):
        if complete:
            logger.info("%s: complete output exists, skipped", job.name)
    return [job for job, complete in zip(jobs, done) if not complete]


def _report(cfg: RunConfig, group, jobs: list[VideoJob], failures: list[RejectedLine], written: list[str]) -> int:
    """Every rank hands in what it wrote and failed; rank 0 reports the whole job. The exit status is the same
    on every rank: 1 if any line of the batch failed anywhere, else 0."""
    from gen3c_dist.parallel.rendezvous import exchange_summaries

    mine = {"written": written, "failures": [dataclasses.asdict(f) for f in failures], "stages_s": group.stage_totals}
    summaries = exchange_summaries(group.env, mine)
    all_failures = sorted({(f["index"], f["error"]) for s in summaries for f in s["failures"]})
    if group.rank == 0:
        if cfg.batch.jsonl is not None:
            report = {"rejected_or_failed": [{"index": i, "error": e} for i, e in all_failures], "jobs": len(jobs),
                      "time": time.time()}
            write_json(check_writable_dir(cfg.output.dir) / f"batch_report_shard{cfg.batch.shard_index}.json", report)
        _log_summary(summaries)
    return 1 if all_failures else 0


def _log_summary(summaries: list[dict]) -> None:
    """The files every replica wrote and the stage seconds summed over ranks, as the run's last lines."""
    paths = [path for summary in summaries for path in summary["written"]]
    for path in paths:
        logger.info("wrote %s", path)
    totals: dict[str, float] = {}
    for summary in summaries:
        for stage, seconds in summary["stages_s"].items():
            totals[stage] = totals.get(stage, 0.0) + seconds
    if totals:
        logger.info("stage seconds (summed over ranks): %s",
                    ", ".join(f"{name} {seconds:.2f}" for name, seconds in sorted(totals.items())))
    if not paths:
        logger.info("no file was written (every video was already complete, or none was valid)")
