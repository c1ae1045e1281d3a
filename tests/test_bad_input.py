"""Bad input a new user makes: refused when the config is composed or the line is read, in one line naming the
key and the problem; surprising but valid input runs with a warning. (Issue "Bad input".)"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gen3c_dist.errors import InputError
from gen3c_dist.run import check_overrides
from gen3c_dist.runner.jobs import batch_jobs
from tests.runner_utils import FAST_DEMO, compose, run_cli


@pytest.mark.parametrize(
    "override, message",
    [
        # the cases the issue found silently accepted or refused with a traceback
        ("sampler.guidance=nan", "sampler.guidance=nan must be finite"),
        ("input.fps=0", "input.fps=0 must be >= 1"),
        ("sampler.steps=0", "sampler.steps=0 must be >= 1"),
        ("sampler.steps=-3", "sampler.steps=-3 must be >= 1"),
        ("input.seed=-1", "input.seed=-1 must be >= 0 (numpy seeds are 32-bit)"),
        # more, of our own
        ("sampler.guidance=inf", "sampler.guidance=inf must be finite"),
        ("sampler.guidance=-2", "sampler.guidance=-2.0 must be >= 0"),
        ("input.seed=4294967296", "input.seed=4294967296 must be <= 4.29497e+09"),
        ("sampler.steps=100000", "sampler.steps=100000 must be <= 1000"),
        ("sampler.sigma_min=0", "sampler.sigma_min=0.0 must be > 0"),
        ("sampler.sigma_max=0.0001", "sampler.sigma_max=0.0001 must be above sampler.sigma_min=0.0002"),
        ("input.height=100", "input.height=100 must be a multiple of 16 (tokenizer x8, patch x2)"),
        ("input.width=0", "input.width=0 must be >= 16"),
        ("input.num_frames=0", "input.num_frames=0 must be >= 121"),
        ("input.num_frames=242", "input.num_frames=242 is not 120K+1; the nearest valid counts are 241 and 361"),
        ("input.fps=1000", "input.fps=1000 must be <= 240"),
        ("trajectory.distance=0", "trajectory.distance=0.0 must be > 0"),
        ("trajectory.center_depth=-1", "trajectory.center_depth=-1.0 must be > 0"),
        ("cache.filter_points_threshold=-0.5", "cache.filter_points_threshold=-0.5 must be >= 0"),
        ("text.max_length=0", "text.max_length=0 must be >= 1"),
        ("distributed.timeout_s=0", "distributed.timeout_s=0.0 must be > 0"),
        ("parallel.ulysses=0", "parallel.ulysses=0 must be >= 1"),
        ("batch.num_shards=0", "batch.num_shards=0 must be >= 1"),
        ("batch.shard_index=3", "batch.shard_index=3 must be below batch.num_shards=1"),
        ("model.num_heads=0", "model.num_heads=0 must be >= 1"),
        ("input.depth_png_scale=0", "input.depth_png_scale=0.0 must be > 0"),
        ("sampler.steps=2.5", "sampler.steps: Value '2.5' of type 'float' could not be converted to Integer"),
        ("input.image=my photo.png", "Error parsing override 'photo.png'; a value with spaces or characters such as"),
    ],
)
def test_bad_numbers_are_refused_at_composition(override: str, message: str):
    problem = check_overrides(["--config-name", "demo", *override.split(" ", 1)] if " " in override
                              else ["--config-name", "demo", override])
    assert problem is not None and message in problem, problem


@pytest.mark.parametrize("override", ["sampler.guidance=nan", "input.seed=-1", "sampler.steps=0", "input.fps=0"])
def test_the_cli_refuses_them_in_one_line_before_anything_starts(override: str):
    result = run_cli(["--config-name", "demo", override])
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gen3c_dist: invalid configuration:") and "Traceback" not in result.stderr


def test_valid_numbers_still_compose():
    for override in ("sampler.guidance=7.5", "sampler.steps=100", "input.seed=0", "input.fps=30", "sampler.guidance=0",
                     "cache.filter_points_threshold=1.0", "input.num_frames=361"):
        assert check_overrides(["--config-name", "demo", override]) is None, override


def _batch(tmp_path: Path, lines: list[str]):
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_text("\n".join(lines) + ("\n" if lines else ""))
    return compose("demo", [f"batch.jsonl={jsonl}"])


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"image": "x.png", "distance": NaN}', "batch line 1: trajectory.distance=nan must be finite"),
        ('{"image": "x.png", "seed": -5}', "batch line 1: input.seed=-5 must be >= 0"),
        ('{"image": "x.png", "frames": 0}', "batch line 1: input.num_frames=0 must be >= 121"),
        ('{"image": "x.png", "distance": Infinity}', "batch line 1: trajectory.distance=inf must be finite"),
        ('["x.png"]', "batch line 1: expected a JSON object, got list"),
        ('{"image": "x.png", "seed": 1.5}', "batch line 1: 'seed' must be int, got float 1.5"),
        ('{"image": "x.png"', "batch line 1: not valid JSON"),
    ],
)
def test_bad_batch_lines_are_named(tmp_path: Path, line: str, message: str):
    jobs, rejected = batch_jobs(_batch(tmp_path, [line]))
    assert jobs == [] and len(rejected) == 1 and message in rejected[0].error, rejected


def test_an_empty_batch_file_is_an_error_naming_it(tmp_path: Path):
    for lines in ([], ["", "   "]):
        with pytest.raises(InputError, match=r"b.jsonl: has no lines"):
            batch_jobs(_batch(tmp_path, lines))


def test_a_batch_file_that_is_not_text_is_named(tmp_path: Path):
    cfg = _batch(tmp_path, ["{}"])
    Path(cfg.batch.jsonl).write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(InputError, match="b.jsonl: is not UTF-8 text"):
        batch_jobs(cfg)


def test_an_empty_batch_under_the_cli_exits_2_with_the_file_named(tmp_path: Path):
    (tmp_path / "empty.jsonl").write_text("")
    result = run_cli(["--config-name", "demo", f"batch.jsonl={tmp_path / 'empty.jsonl'}", f"output.dir={tmp_path}"])
    assert result.returncode == 2 and "empty.jsonl: has no lines" in result.stderr and "Traceback" not in result.stderr


def test_a_camera_that_leaves_the_scene_and_a_squashed_image_run_with_one_warning_each(tmp_path: Path):
    wide, depth = tmp_path / "wide.png", tmp_path / "wide_depth.npz"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 320, 3), dtype=np.uint8)).save(wide)
    # A depth file for it: MoGe (even the tiny random one) costs 15 s here and is not what is tested
    np.savez(depth, depth=np.full((32, 320), 2.0), intrinsics=np.array([[100.0, 0, 160], [0, 100, 16], [0, 0, 1]]))
    result = run_cli(["--config-name", "demo", *FAST_DEMO, f"output.dir={tmp_path}", f"input.image={wide}",
                      f"input.depth={depth}", "checkpoints.random_weights=true", "trajectory.distance=1e6",
                      "sampler.steps=1"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("will look stretched by") == 1
    assert result.stderr.count("trajectory.distance=1e+06 moves the camera") == 1
