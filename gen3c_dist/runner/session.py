"""One invocation of the runner: validate everything, choose the layout, load models, make every video, report.

Order matters for the promises the runner makes: the inputs, the output folder, the checkpoint paths, the
layout and the speed options are checked on every rank before any model loads, so a bad input stops every
rank with the same message. Before models load, rank 0 also removes the temporaries of ended runs
(:mod:`gen3c_dist.runner.leftovers`) and decides, from each video's fingerprint, what is already made, what
resumes and what is refused (:mod:`gen3c_dist.runner.fingerprint`). Outputs are written by the lead of each
data-parallel replica only; a batch line that fails is reported and the next one runs; a rank with nothing
(left) to make waits at the end, outside any collective, and every rank exits with the same status. A failure
on one rank ends every rank within seconds (:mod:`gen3c_dist.parallel.faults`); Ctrl-C ends the run with one
line saying what was kept (:mod:`gen3c_dist.runner.interrupt`). The JSON record of each video is assembled here.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
import socket
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy
import torch

import gen3c_dist
from gen3c_dist.config import RunConfig
from gen3c_dist.parallel.faults import fault_guard, report_input_error
from gen3c_dist.parallel.parallelize import check_speed_options
from gen3c_dist.parallel.rendezvous import exchange_summaries
from gen3c_dist.runner.interrupt import WRITER_WAIT_S, RunInterrupted, ignore_further_interrupts, kept_line
from gen3c_dist.errors import InputError, SharedInputError
from gen3c_dist.runner.fingerprint import Fingerprint, check_existing, remove_outputs, video_fingerprint
from gen3c_dist.runner.jobs import RejectedLine, VideoJob, collect_jobs
from gen3c_dist.runner.leftovers import remove_stale_temporaries
from gen3c_dist.runner.models import LoadedModels, load_models, preflight_checkpoints
from gen3c_dist.runner.outputs import VideoOutputs, check_writable_dir, write_json
from gen3c_dist.runner.replica import Replica, pending_chunks, resolve_device, resolve_dtype
from gen3c_dist.runner.resume import PartialState
from gen3c_dist.runner.video import VideoRun, run_video
from gen3c_dist.shapes import dit_tokens, latent_thw, num_chunks

logger = logging.getLogger("gen3c_dist")

TINY_MODEL_WARNING = (
    "this run uses seeded RANDOM weights (checkpoints.random_weights=true): the generated frames are not "
    "meaningful; the cache renders (<name>_cache.mp4) are"
)
RECORD_SCHEMA_VERSION = 2  # bump when a field of the JSON record changes meaning or goes away


def setup_logging(rank: int) -> None:
    level = logging.INFO if rank == 0 else logging.WARNING
    logging.basicConfig(level=level, format=f"[rank {rank}] %(levelname)s %(name)s: %(message)s", stream=sys.stderr, force=True)


def run_session(cfg: RunConfig) -> int:
    """Exit status: 0 when every assigned video was made (or already complete), 1 if any batch line failed."""
    setup_logging(int(os.environ.get("RANK", "0")))  # before the group exists, so layout errors carry the rank
    replica = Replica(cfg)
    setup_logging(replica.rank)
    progress = Progress()
    try:
        # An exception on one rank is reported through the store; the others stop with a message naming it.
        with fault_guard(replica.env):
            try:
                return _run(cfg, replica, progress)
            except SharedInputError as err:  # every rank prints it before any leaves (replica.close waits)
                report_input_error(err)
                raise
            except KeyboardInterrupt:
                ignore_further_interrupts()
                # The ranks that write outputs say what is kept (before the layout exists: rank 0, once).
                writes = replica.rank == 0 if replica.layout is None else replica.is_lead
                raise RunInterrupted(progress.kept() if writes else None) from None
    finally:
        replica.close()


@dataclasses.dataclass
class Progress:
    """What this rank's run has finished, and the video in progress: the line printed after Ctrl-C."""

    complete: list[str] = dataclasses.field(default_factory=list)
    current: Optional[tuple[str, Path, int]] = None  # (name, output stem, chunks)

    def kept(self) -> str:
        return kept_line(self.complete, self.current)


def _run(cfg: RunConfig, replica: Replica, progress: Progress) -> int:
    jobs, rejected = replica.run_checked(lambda: collect_jobs(cfg))
    replica.run_checked(lambda: check_writable_dir(cfg.output.dir))
    if replica.rank == 0:
        _remove_leftovers(Path(cfg.output.dir))
    replica.run_checked(lambda: preflight_checkpoints(cfg, jobs))
    pending, fingerprints, refused = _pending_jobs(cfg, replica, jobs)
    rejected = sorted([*rejected, *refused], key=lambda line: line.index)
    for line in rejected if replica.rank == 0 else ():  # every rank found the same: rank 0 says it, once
        logger.error("skipping %s", line.error)
    replica.choose_layout(cfg, pending_chunks(pending))
    settings = replica.settings
    replica.run_checked(lambda: check_speed_options(cfg.runtime, device=settings.device, dtype=settings.dtype,
                                                    head_dim=cfg.model.head_dim, cp_size=replica.layout.cp))
    if cfg.checkpoints.random_weights and pending and replica.rank == 0:
        logger.warning(TINY_MODEL_WARNING)  # once per run: every model with an unset path gets random weights
    # Round-robin over the replicas. A replica with fewer videos (or none) waits at the end, in replica.close(),
    # outside any collective, for the others to finish.
    my_jobs = pending[replica.layout.data_index::replica.layout.data]
    failures, written, totals = list(rejected), [], {}
    if my_jobs:
        models = load_models(cfg, my_jobs, layout=replica.layout, settings=settings, counter=replica.counter)
        try:
            for job in my_jobs:
                progress.current = (job.name, job.stem(cfg.output.dir), num_chunks(job.input.num_frames))
                error = _make_video(cfg, job, replica, models, written, totals, progress, fingerprints[job.index])
                if error is not None:
                    failures.append(RejectedLine(job.index, f"{job.name}: {error}"))
            models.writer.drain()  # the last video's files are complete before the batch report and exit
        except KeyboardInterrupt:
            ignore_further_interrupts()
            models.writer.abandon(WRITER_WAIT_S)
            raise
        finally:
            models.writer.close()
    return _report(cfg, replica, jobs, failures, [str(p) for p in written], totals)


def _remove_leftovers(output_dir: Path) -> None:
    removed = remove_stale_temporaries(output_dir)
    if removed:
        names = ", ".join(str(path.relative_to(output_dir)) for path in removed[:5])
        more = f" and {len(removed) - 5} more" if len(removed) > 5 else ""
        logger.info("removed %d temporary file%s left in %s by runs that are no longer running: %s%s", len(removed),
                    "s" if len(removed) > 1 else "", output_dir, names, more)


def _pending_jobs(cfg: RunConfig, replica: Replica, jobs: list[VideoJob]
                  ) -> tuple[list[VideoJob], dict[int, Fingerprint], list[RejectedLine]]:
    """The jobs still to make, every job's fingerprint, and the batch lines refused because an output of that
    name was made with other settings. Rank 0 hashes the inputs and looks at the output folder once, and tells
    every rank, so all agree; in a single run the refusal is the run's error, on every rank."""
    dtype = str(resolve_dtype(cfg, resolve_device(cfg, replica.env))).replace("torch.", "")
    surveyed = replica.broadcast_object(replica.run_checked(
        lambda: [_survey(cfg, job, dtype) for job in jobs] if replica.rank == 0 else None))
    pending, fingerprints, refused = [], {}, []
    for job, (status, detail) in zip(jobs, surveyed):
        if status == "refused":
            refused.append(RejectedLine(job.index, f"batch line {job.index + 1} ({job.name}): {detail}"))
            continue
        fingerprints[job.index] = Fingerprint(detail)
        if status == "complete":
            logger.info("%s: complete output exists, made with the same settings; skipped", job.name)
        else:
            pending.append(job)
    return pending, fingerprints, refused


def _survey(cfg: RunConfig, job: VideoJob, dtype: str) -> tuple[str, Any]:
    """("make" | "complete", fingerprint table) or, for a batch line, ("refused", the reason)."""
    fingerprint = video_fingerprint(job, cfg, dtype=dtype)
    stem = job.stem(cfg.output.dir)
    if cfg.output.overwrite:
        if remove_outputs(stem):
            logger.info("%s: output.overwrite=true: removed the previous outputs", job.name)
        return "make", fingerprint.parts
    if not cfg.output.resume:
        return "make", fingerprint.parts
    try:
        complete = check_existing(stem, fingerprint, PartialState(stem, "").stored_fingerprint())
    except InputError as err:
        if cfg.batch.jsonl is None:
            raise
        return "refused", str(err)
    return ("complete" if complete else "make"), fingerprint.parts


def _make_video(cfg: RunConfig, job: VideoJob, replica: Replica, models: LoadedModels, written: list,
                totals: dict, progress: Progress, fingerprint: Fingerprint) -> str | None:
    """One video; its files are finished on the background writer. A failed single-process batch line returns
    its error (every other failure raises: with several ranks, a peer may be inside a collective)."""
    start, writer = time.perf_counter(), models.writer
    writer_start = writer.busy_s  # this video's share of the writer's time, inline or in the background
    outputs = None
    if replica.is_lead:
        outputs = VideoOutputs(job.stem(cfg.output.dir), fps=job.input.fps, save_latents=cfg.output.save_latents,
                               save_buffer=cfg.output.save_buffer, fingerprint=fingerprint)
    try:
        run = run_video(cfg, job, replica, models, outputs)
    except KeyboardInterrupt:
        ignore_further_interrupts()
        if writer.abandon(WRITER_WAIT_S) and outputs is not None:  # no write is running: remove the partial mp4s
            outputs.abort()
        raise
    except (ValueError, RuntimeError) as err:
        if outputs is not None:
            _abort(writer, outputs)
        if replica.env.world_size > 1 or cfg.batch.jsonl is None:
            raise
        logger.error("%s failed: %s", job.name, err)
        return str(err)
    if outputs is None:
        _add_totals(totals, run.timer.seconds)
        return None

    def finish() -> None:
        run.timer.seconds["write"] = writer.busy_s - writer_start
        written.extend(outputs.finish(lambda frames: video_record(cfg, job, replica, models, run, frames,
                                                                  wall_s=time.perf_counter() - start,
                                                                  fingerprint=fingerprint)))
        PartialState(outputs.stem, "").remove()
        progress.complete.append(job.name)
        _add_totals(totals, run.timer.seconds)
        logger.info("%s: complete (%.1f s)", job.name, time.perf_counter() - start)

    writer.submit(finish)
    return None


def _abort(writer, outputs: VideoOutputs) -> None:
    try:
        writer.drain()
    except Exception as err:  # the run already failed; the write error is secondary
        logger.warning("a background write also failed: %s", err)
    outputs.abort()


def _add_totals(totals: dict, seconds: dict) -> None:
    for stage, value in seconds.items():
        totals[stage] = round(totals.get(stage, 0.0) + value, 4)


# ---- the record ---------------------------------------------------------------------------------------------
def versions() -> dict[str, str]:
    found = {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
             "gen3c_dist": gen3c_dist.__version__, "cuda": str(torch.version.cuda)}
    commit = gen3c_dist.source_commit()
    if commit is not None:
        found["gen3c_dist_commit"] = commit
    return found


def machine(device: torch.device) -> dict:
    """Where the run happened: host, GPU name and count (none on a CPU run)."""
    info = {"host": socket.gethostname(), "gpu_name": None, "gpu_count": 0}
    if device.type == "cuda":
        info["gpu_name"], info["gpu_count"] = torch.cuda.get_device_name(device), torch.cuda.device_count()
    return info


def video_record(cfg: RunConfig, job: VideoJob, replica: Replica, models: LoadedModels, run: VideoRun, frames: int,
                 *, wall_s: float, fingerprint: Fingerprint) -> dict:
    """The JSON record of one video: what was asked, where and how it ran, and how long each stage took.

    ``fingerprint`` (gen3c_dist.runner.fingerprint) is what a rerun compares before it skips this video."""
    layout, settings = replica.layout, replica.settings
    return {
        "schema_version": RECORD_SCHEMA_VERSION,
        "name": job.name,
        "fingerprint": fingerprint.record(),
        "seed": job.input.seed,
        "frames": frames,
        "job": dataclasses.asdict(job),
        "config": dataclasses.asdict(cfg),
        "versions": versions(),
        "machine": machine(settings.device),
        "command_line": [Path(sys.argv[0]).name or "python", *sys.argv[1:]],
        "device": str(settings.device),
        "dtype": str(settings.dtype).replace("torch.", ""),
        "random_weights": cfg.checkpoints.random_weights,
        "wall_s": round(wall_s, 3),
        **run.timer.record(),
        "tokens": dit_tokens(cfg.model, latent_thw(cfg.input.height, cfg.input.width)),
        "world_size": replica.env.world_size,
        "parallel_layout": layout.describe(),
        "layout": {"data": layout.data, "cfg": layout.cfg, "ulysses": layout.ulysses, "ring": layout.ring,
                   "cp": layout.cp, "attention": layout.attention, "tokenizer": cfg.parallel.tokenizer,
                   "overlap": settings.overlap, "mode": cfg.parallel.layout,
                   "requested": {k: getattr(cfg.parallel, k) for k in ("data", "cfg", "ulysses", "ring")},
                   "reason": replica.layout_choice.reason, "ranks_per_node": replica.env.local_world_size},
        "ranks": run.rank_lines,
        "load_s": {"conditioning_models": round(models.load_s, 4), "dit": round(models.dit.seconds, 4)},
    }


# ---- the end of the run -------------------------------------------------------------------------------------
def _report(cfg: RunConfig, replica: Replica, jobs: list[VideoJob], failures: list[RejectedLine],
            written: list[str], totals: dict) -> int:
    """Every rank hands in what it wrote and failed; rank 0 reports the whole job. The exit status is the same
    on every rank: 1 if any line of the batch failed anywhere, else 0."""
    mine = {"written": written, "failures": [dataclasses.asdict(f) for f in failures], "stages_s": totals}
    summaries = exchange_summaries(replica.env, mine)
    all_failures = sorted({(f["index"], f["error"]) for s in summaries for f in s["failures"]})
    if replica.rank == 0:
        if cfg.batch.jsonl is not None:
            report = {"rejected_or_failed": [{"index": i, "error": e} for i, e in all_failures], "jobs": len(jobs),
                      "time": time.time()}
            report_file = check_writable_dir(cfg.output.dir) / f"batch_report_shard{cfg.batch.shard_index}.json"
            write_json(report_file, report)
            if all_failures:  # the bad lines together, at the end, where a user looks
                failed = sorted({index for index, _ in all_failures})
                lines = len(jobs) + len(set(failed) - {job.index for job in jobs})  # rejected lines made no job
                logger.error("%d of %d batch lines were not made (lines %s); each reason is in %s", len(failed),
                             lines, ", ".join(str(index + 1) for index in failed), report_file)
        _log_summary(summaries)
    return 1 if all_failures else 0


def _log_summary(summaries: list[dict]) -> None:
    """The files every replica wrote and the stage seconds summed over ranks, as the run's last lines."""
    paths = [path for summary in summaries for path in summary["written"]]
    for path in paths:
        logger.info("wrote %s", path)
    totals: dict[str, float] = {}
    for summary in summaries:
        _add_totals(totals, summary["stages_s"])
    if totals:
        logger.info("stage seconds (summed over ranks): %s",
                    ", ".join(f"{name} {seconds:.2f}" for name, seconds in sorted(totals.items())))
    if not paths:
        logger.info("no file was written (every video was already complete, or none was valid)")
