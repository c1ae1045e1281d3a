"""The videos a run makes: one from the config, or one per line of a batch JSONL, each validated up front.

Validation here is cheap (file headers, numbers, names) and runs identically on every rank before any model
loads, so every rank reports the same message. A bad batch line is reported and skipped; the others run.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Callable

from gen3c_dist.conditioning.depth_file import check_depth_fits_image, load_depth_file
from gen3c_dist.conditioning.input_image import validate_input_image
from gen3c_dist.config import InputConfig, RunConfig, TrajectoryConfig
from gen3c_dist.errors import InputError
from gen3c_dist.geometry.camera import CAMERA_ROTATIONS, TRAJECTORIES, load_trajectory_file
from gen3c_dist.runner.outputs import resolve_output_stem
from gen3c_dist.shapes import num_chunks

# The valid names are the geometry module's; this module only words the error in config-key terms.
TRAJECTORY_TYPES = TRAJECTORIES
ROTATIONS = tuple(CAMERA_ROTATIONS)

# JSONL key -> (config section, field, accepted python types)
BATCH_KEYS: dict[str, tuple[str, str, tuple[type, ...]]] = {
    "image": ("input", "image", (str,)),
    "depth": ("input", "depth", (str,)),
    "intrinsics": ("input", "intrinsics", (str,)),
    "prompt": ("input", "prompt", (str,)),
    "negative_prompt": ("input", "negative_prompt", (str,)),
    "frames": ("input", "num_frames", (int,)),
    "seed": ("input", "seed", (int,)),
    "trajectory": ("trajectory", "type", (str,)),
    "rotation": ("trajectory", "rotation", (str,)),
    "distance": ("trajectory", "distance", (int, float)),
    "trajectory_file": ("trajectory", "file", (str,)),
    "name": ("output", "name", (str,)),
}


@dataclasses.dataclass(frozen=True)
class VideoJob:
    index: int  # line number in the batch (0 for a single run)
    name: str
    input: InputConfig
    trajectory: TrajectoryConfig

    def stem(self, output_dir: str) -> Path:
        return resolve_output_stem(output_dir, self.name)


@dataclasses.dataclass(frozen=True)
class RejectedLine:
    index: int
    error: str


def check_num_frames(n: int) -> int:
    """Frame counts are 120K + 1; otherwise name the two nearest valid counts (spec 1.6). Returns K."""
    return num_chunks(n)


def validate_job(job: VideoJob, *, output_dir: str, checks: list[Callable[[VideoJob], None]]) -> None:
    """Raise one ValueError naming the input and the problem."""
    if not job.input.image:
        raise InputError("input.image is not set: give the path of the input image")
    if Path(job.input.image).is_dir():
        raise InputError(f"input.image {job.input.image}: is a folder; give the path of an image file")
    if not Path(job.input.image).is_file():
        raise InputError(f"input.image {job.input.image}: no such file")
    check_num_frames(job.input.num_frames)
    job.stem(output_dir)
    traj = job.trajectory
    if traj.file is None:
        if traj.type not in TRAJECTORY_TYPES:
            raise InputError(f"trajectory.type={traj.type!r} is not one of {', '.join(TRAJECTORY_TYPES)}")
        if traj.rotation not in ROTATIONS:
            raise InputError(f"trajectory.rotation={traj.rotation!r} is not one of {', '.join(ROTATIONS)}")
        if not (isinstance(traj.distance, (int, float)) and math.isfinite(traj.distance) and traj.distance > 0):
            raise InputError(f"trajectory.distance={traj.distance!r} must be a positive finite number")
    for check in checks:
        check(job)


def single_job(cfg: RunConfig) -> VideoJob:
    return VideoJob(index=0, name=cfg.output.name, input=cfg.input, trajectory=cfg.trajectory)


def parse_batch_line(index: int, line: str, cfg: RunConfig) -> VideoJob:
    """One JSONL line -> a job, with the run config as defaults; unknown keys and wrong types are errors."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise InputError(f"batch line {index + 1}: not valid JSON ({err.msg})") from err
    if not isinstance(record, dict):
        raise InputError(f"batch line {index + 1}: expected a JSON object, got {type(record).__name__}")
    unknown = sorted(set(record) - set(BATCH_KEYS))
    if unknown:
        raise InputError(f"batch line {index + 1}: unknown keys {unknown}; accepted keys are {sorted(BATCH_KEYS)}")
    sections: dict[str, dict[str, Any]] = {"input": {}, "trajectory": {}, "output": {}}
    for key, value in record.items():
        section, field, types = BATCH_KEYS[key]
        if isinstance(value, bool) or not isinstance(value, types):
            wanted = " or ".join(t.__name__ for t in types)
            raise InputError(f"batch line {index + 1}: '{key}' must be {wanted}, got {type(value).__name__} {value!r}")
        sections[section][field] = value
    return VideoJob(
        index=index,
        name=sections["output"].get("name", str(index)),  # the official batch naming is the line index
        input=dataclasses.replace(cfg.input, **sections["input"]),
        trajectory=dataclasses.replace(cfg.trajectory, **sections["trajectory"]),
    )


def batch_jobs(cfg: RunConfig) -> tuple[list[VideoJob], list[RejectedLine]]:
    """This shard's lines of ``batch.jsonl`` (index % num_shards == shard_index), parsed; bad lines rejected."""
    batch = cfg.batch
    if batch.num_shards < 1 or not 0 <= batch.shard_index < batch.num_shards:
        raise InputError(f"batch.shard_index={batch.shard_index} must be in [0, batch.num_shards={batch.num_shards})")
    path = Path(batch.jsonl)
    try:
        lines = path.read_text().splitlines()
    except OSError as err:
        raise InputError(f"batch.jsonl {path}: cannot be read ({err.strerror or err})") from err
    jobs, rejected = [], []
    for index, line in enumerate(lines):
        if not line.strip() or index % batch.num_shards != batch.shard_index:
            continue
        try:
            jobs.append(parse_batch_line(index, line, cfg))
        except ValueError as err:
            rejected.append(RejectedLine(index, str(err)))
    names = [job.name for job in jobs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InputError(f"batch.jsonl {path}: output names used more than once: {duplicates}")
    return jobs, rejected


# ---- the checks of every job, run on every rank before any model loads ---------------------------------------
def input_checks() -> list[Callable[[VideoJob], None]]:
    """Per-job checks that read file headers only (cheap enough for every rank)."""

    def image_and_depth(job: VideoJob) -> None:
        image_hw = validate_input_image(job.input.image)
        if job.input.depth is not None:
            depth_hw, _ = load_depth_file(job.input.depth, png_scale=job.input.depth_png_scale,
                                          intrinsics=job.input.intrinsics)
            check_depth_fits_image(job.input.depth, depth_hw.shape, job.input.image, image_hw)
        elif job.input.intrinsics is not None:
            raise InputError("input.intrinsics is set without input.depth: it gives the depth file's intrinsics "
                             "(MoGe estimates its own)")

    def trajectory(job: VideoJob) -> None:
        if job.trajectory.file is not None:
            load_trajectory_file(job.trajectory.file, num_frames=job.input.num_frames)

    def size(job: VideoJob) -> None:
        if job.input.height % 16 or job.input.width % 16 or job.input.height < 16 or job.input.width < 16:
            raise InputError(f"input.height/width = {job.input.height}x{job.input.width} must be positive multiples "
                             "of 16 (tokenizer x8, patch x2)")

    return [size, image_and_depth, trajectory]


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
        except InputError as err:
            rejected.append(RejectedLine(job.index, f"batch line {job.index + 1} ({job.name}): {err}"))
    return jobs, sorted(rejected, key=lambda r: r.index)
