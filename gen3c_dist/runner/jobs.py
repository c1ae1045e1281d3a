"""The videos a run makes: one from the config, or one per line of a batch JSONL, each validated up front.

Validation here is cheap (file headers, numbers, names, the small arrays of a video's npz or a multi-view input)
and runs identically on every rank before any model loads, so every rank reports the same message. A bad batch
line is reported and skipped; the others run. Each job is one of three modes (image, video, multi-view), chosen
by its one source key (:func:`gen3c_dist.conditioning.sources.input_mode`); each mode has its own checks.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Callable

from gen3c_dist.conditioning.depth_file import check_depth_fits_image, load_depth_file
from gen3c_dist.config_checks import check_fields
from gen3c_dist.conditioning.input_image import validate_input_image
from gen3c_dist.conditioning.multiview_source import check_multiview_job
from gen3c_dist.conditioning.sources import (SOURCE_KEYS, InputMode, check_mode_keys, input_mode, mode_of_key,
                                             unset_other_modes)
from gen3c_dist.conditioning.video_source import check_video_job
from gen3c_dist.config import InputConfig, RunConfig, TrajectoryConfig, VideoFormat
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
    "video": ("input", "video", (str,)),
    "video_format": ("input", "video_format", (str,)),
    "start_frame": ("input", "start_frame", (int,)),
    "vipe_read_mask": ("input", "vipe_read_mask", (bool,)),
    "key_frames": ("input", "key_frames", (str,)),
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


def _check_source_path(inputs: InputConfig, mode: InputMode) -> None:
    key = SOURCE_KEYS[mode]
    path = Path(getattr(inputs, key))
    if mode == InputMode.image and path.is_dir():
        raise InputError(f"input.image {path}: is a folder; give the path of an image file")
    if mode == InputMode.image and not path.is_file():
        raise InputError(f"input.image {path}: no such file")
    if not path.exists():
        raise InputError(f"input.{key} {path}: no such file or folder")
    if mode == InputMode.video:
        if str(inputs.video_format) not in VideoFormat.names():
            raise InputError(f"input.video_format={str(inputs.video_format)!r} is not one of "
                             f"{', '.join(VideoFormat.names())}")
        if isinstance(inputs.start_frame, bool) or not isinstance(inputs.start_frame, int) or inputs.start_frame < 0:
            raise InputError(f"input.start_frame={inputs.start_frame!r} must be an integer >= 0")


def validate_job(job: VideoJob, *, output_dir: str, checks: list[Callable[[VideoJob], None]]) -> None:
    """Raise one ValueError naming the input and the problem."""
    mode = input_mode(job.input)
    _check_source_path(job.input, mode)
    check_mode_keys(job.input, mode)
    check_num_frames(job.input.num_frames)
    job.stem(output_dir)
    traj = job.trajectory
    if traj.file is None and mode != InputMode.multiview:  # a multi-view path is the npz's w2cs_all
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
        if isinstance(value, bool) != (bool in types) or not isinstance(value, types):
            wanted = " or ".join(t.__name__ for t in types)
            raise InputError(f"batch line {index + 1}: '{key}' must be {wanted}, got {type(value).__name__} {value!r}")
        sections[section][field] = value
    sources = [field for field in SOURCE_KEYS.values() if field in sections["input"]]
    if len(sources) == 1:
        # A line's own input replaces the run config's, with the config's keys of other modes: the preset's
        # input.image and input.depth do not follow a line with "video". Two inputs on a line are refused later.
        sections["input"] = {**unset_other_modes(mode_of_key(sources[0])), **sections["input"]}
    job = VideoJob(
        index=index,
        name=sections["output"].get("name", str(index)),  # the official batch naming is the line index
        input=dataclasses.replace(cfg.input, **sections["input"]),
        trajectory=dataclasses.replace(cfg.trajectory, **sections["trajectory"]),
    )
    # The same rules as the config's own fields, with the line named (JSON allows NaN and Infinity).
    check_fields("input", job.input, where=f"batch line {index + 1}")
    check_fields("trajectory", job.trajectory, where=f"batch line {index + 1}")
    return job


def batch_jobs(cfg: RunConfig) -> tuple[list[VideoJob], list[RejectedLine]]:
    """This shard's lines of ``batch.jsonl`` (index % num_shards == shard_index), parsed; bad lines rejected."""
    batch = cfg.batch
    if batch.num_shards < 1 or not 0 <= batch.shard_index < batch.num_shards:
        raise InputError(f"batch.shard_index={batch.shard_index} must be in [0, batch.num_shards={batch.num_shards})")
    path = Path(batch.jsonl)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise InputError(f"batch.jsonl {path}: is not UTF-8 text ({err.reason} at byte {err.start})") from err
    except OSError as err:
        raise InputError(f"batch.jsonl {path}: cannot be read ({err.strerror or err})") from err
    if not any(line.strip() for line in lines):
        raise InputError(f"batch.jsonl {path}: has no lines; give one JSON object per line (see README, 'Running')")
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
    """Per-job checks that read file headers and small arrays only (cheap enough for every rank); each applies
    to the modes it names."""

    def image_and_depth(job: VideoJob) -> None:
        if input_mode(job.input) != InputMode.image:
            return
        image_hw = validate_input_image(job.input.image)
        if job.input.depth is not None:
            depth_hw, _ = load_depth_file(job.input.depth, png_scale=job.input.depth_png_scale,
                                          intrinsics=job.input.intrinsics)
            check_depth_fits_image(job.input.depth, depth_hw.shape, job.input.image, image_hw)
        elif job.input.intrinsics is not None:
            raise InputError("input.intrinsics is set without input.depth: it gives the depth file's intrinsics "
                             "(MoGe estimates its own)")

    def trajectory(job: VideoJob) -> None:
        if job.trajectory.file is not None and input_mode(job.input) == InputMode.image:  # the others check theirs
            load_trajectory_file(job.trajectory.file, num_frames=job.input.num_frames)

    def video(job: VideoJob) -> None:
        if input_mode(job.input) == InputMode.video:
            check_video_job(job.input, job.trajectory)

    def key_frames(job: VideoJob) -> None:
        if input_mode(job.input) == InputMode.multiview:
            check_multiview_job(job.input, job.trajectory)

    def size(job: VideoJob) -> None:
        if job.input.height % 16 or job.input.width % 16 or job.input.height < 16 or job.input.width < 16:
            raise InputError(f"input.height/width = {job.input.height}x{job.input.width} must be positive multiples "
                             "of 16 (tokenizer x8, patch x2)")

    return [size, image_and_depth, trajectory, video, key_frames]


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
