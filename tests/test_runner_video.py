"""Video to video through the runner: per-chunk 4D-cache renders, ViPE input, resume, torchrun, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from gen3c_dist.conditioning.video_inputs import VideoSourceSpec, load_video_source
from gen3c_dist.config import CacheConfig, GeneratedFrameDepth, InputConfig, TrajectoryConfig
from gen3c_dist.geometry.cache4d import Cache4D
from gen3c_dist.geometry.camera import generate_video_trajectory
from gen3c_dist.errors import InputError
from gen3c_dist.runner.jobs import VideoJob, parse_batch_line
from gen3c_dist.runner.models import needs_moge
from gen3c_dist.runner.session import run_session
from tests.mode_utils import (HEIGHT, LONG, WIDTH, assert_latents_match, assert_one_line_refusal, cli_latents,
                              spy_on_chunks, video_args, write_video_source)
from tests.runner_utils import FAST_DEMO, compose, crash_on_chunk, run_cli
from tests.video_utils import small_video, write_vipe

LONG_RUN = ("input.num_frames=241", "cache.foreground_masking=true")  # masking works past chunk 0 (issue 14)


def video_config(out: Path, source: Path, *extra: str):
    return compose("demo_video", [*FAST_DEMO, f"input.video={source}", f"output.dir={out}", *extra])


@pytest.fixture(scope="module")
def long_run(tmp_path_factory, mode_inputs):
    """One in-process 241-frame run with foreground masking; every chunk's renders and condition video spied."""
    out = tmp_path_factory.mktemp("long_video")
    with pytest.MonkeyPatch.context() as patch:
        seen = spy_on_chunks(patch)
        assert run_session(video_config(out, mode_inputs.video, *LONG_RUN, "output.save_latents=true")) == 0
    return out, seen


def test_each_chunk_renders_its_own_source_frames_along_the_path_composed_on_the_source_cameras(long_run,
                                                                                                mode_inputs):
    _, seen = long_run
    video = load_video_source(VideoSourceSpec(str(mode_inputs.video), HEIGHT, WIDTH, LONG))
    cache = Cache4D(video.frames_T3HW, video.depth_T1HW, video.mask_T1HW, video.w2c_T44, video.K_T33,
                    filter_points_threshold=0.05, foreground_masking=True)
    w2cs, Ks = generate_video_trajectory("left", camera_rotation="center_facing", movement_distance=0.3,
                                         center_depth=1.0, source_w2c_N44=video.w2c_T44, source_K_N33=video.K_T33)
    assert sorted(seen) == [0, 1]
    for k in (0, 1):
        frames = slice(120 * k, 120 * k + 121)
        warps, masks = cache.render(w2cs[frames][None], Ks[frames][None], start_frame_idx=120 * k)
        assert seen[k].warps.shape == (1, 121, 1, 3, HEIGHT, WIDTH)  # one buffer: the second pair is zeros
        assert torch.equal(seen[k].warps, warps) and torch.equal(seen[k].masks, masks)
    # Chunk 1 must warp source frames 120..240; the same cameras from frames 0..120 give another render.
    other, _ = cache.render(w2cs[120:241][None], Ks[120:241][None], start_frame_idx=0)
    assert not torch.equal(other, seen[1].warps)
    # Chunk 0 is conditioned on source frame 0 itself (float32, as the official tensor); chunk 1 on a decoded one.
    condition0 = seen[0].condition_video
    assert condition0.dtype == torch.float32 and torch.equal(condition0[0, :, 0], video.frames_T3HW[0])
    assert not torch.equal(seen[1].condition_video[0, :, 0], video.frames_T3HW[120])


def test_long_video_outputs_and_record(long_run, mode_inputs):
    out, _ = long_run
    assert iio.imread(out / "demo_video.mp4").shape == (241, HEIGHT, WIDTH, 3)
    assert iio.imread(out / "demo_video_cache.mp4").shape == (241, HEIGHT, 2 * WIDTH, 3)  # one buffer + video
    record = json.loads((out / "demo_video.json").read_text())
    assert record["frames"] == 241 and record["job"]["input"]["video"] == str(mode_inputs.video)
    assert record["job"]["input"]["image"] is None and record["config"]["cache"]["foreground_masking"] is True
    latents = load_file(str(out / "demo_video_latents.safetensors"))
    assert set(latents) == {"chunk0", "chunk1"} and not torch.equal(latents["chunk0"], latents["chunk1"])


def test_241_frames_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path: Path, monkeypatch, long_run,
                                                                     mode_inputs):
    whole, _ = long_run
    config = video_config(tmp_path, mode_inputs.video, *LONG_RUN, "output.save_latents=true")
    with monkeypatch.context() as patch:
        crash_on_chunk(patch, 1)
        with pytest.raises(RuntimeError, match="simulated crash"):
            run_session(config)
    partial = tmp_path / "demo_video.partial"
    assert (partial / "chunk0.safetensors").exists() and not (tmp_path / "demo_video.mp4").exists()
    assert load_file(str(partial / "state.safetensors")) == {}  # nothing but the source to rebuild
    assert run_session(config) == 0
    a = load_file(str(whole / "demo_video_latents.safetensors"))
    b = load_file(str(tmp_path / "demo_video_latents.safetensors"))
    assert set(a) == set(b) == {"chunk0", "chunk1"}
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert (iio.imread(whole / "demo_video.mp4") == iio.imread(tmp_path / "demo_video.mp4")).all()
    assert not partial.exists()


def test_vipe_source_with_start_frame_mask_and_a_trajectory_file_without_intrinsics(tmp_path: Path, monkeypatch):
    """A 140-frame ViPE clip from frame 30 (padded by its last frame), its masks read, cameras from a file."""
    clip = small_video(140, 2 * HEIGHT, 2 * WIDTH)  # ViPE is resized to the run's size
    root = write_vipe(tmp_path / "vipe", clip, masks=True)
    spec = VideoSourceSpec(str(root), HEIGHT, WIDTH, 121, format="vipe", start_frame=30, vipe_read_mask=True)
    video = load_video_source(spec)
    shift = torch.eye(4)
    shift[0, 3] = 0.05
    w2cs = shift @ video.w2c_T44
    np.savez(tmp_path / "path.npz", w2c=w2cs.numpy())  # no intrinsics: the source's per-frame K is used
    seen = spy_on_chunks(monkeypatch)
    config = video_config(tmp_path / "out", root, "input.video_format=vipe", "input.start_frame=30",
                          "input.vipe_read_mask=true", f"trajectory.file={tmp_path / 'path.npz'}")
    assert run_session(config) == 0
    cache = Cache4D(video.frames_T3HW, video.depth_T1HW, video.mask_T1HW, video.w2c_T44, video.K_T33,
                    filter_points_threshold=0.05)
    warps, masks = cache.render(w2cs[None], video.K_T33[None])
    assert torch.equal(seen[0].warps, warps) and torch.equal(seen[0].masks, masks)
    assert torch.equal(seen[0].condition_video[0, :, 0], video.frames_T3HW[0])
    # The flag mattered: without the masks the dropout (frames 40-79 of the clip, depth 0) would enter the cache,
    # which the depth check refuses.
    assert float(video.mask_T1HW.mean()) < 1.0
    with pytest.raises(ValueError, match="zero, negative or non-finite depth where the mask is on"):
        load_video_source(VideoSourceSpec(str(root), HEIGHT, WIDTH, 121, format="vipe", start_frame=30))


def test_batch_lines_take_the_video_keys_and_replace_the_presets_input():
    cfg = compose("demo", [])  # an image preset with input.depth set
    line = {"video": "clip/", "video_format": "vipe", "start_frame": 4, "vipe_read_mask": True}
    job = parse_batch_line(0, json.dumps(line), cfg)
    assert (job.input.video, job.input.image, job.input.depth) == ("clip/", None, None)
    assert (job.input.video_format, job.input.start_frame, job.input.vipe_read_mask) == ("vipe", 4, True)
    assert parse_batch_line(1, '{"seed": 3}', cfg).input.image == cfg.input.image  # no input: the config's
    for bad, message in [({"video": "c", "vipe_read_mask": 1}, "'vipe_read_mask' must be bool, got int 1"),
                         ({"video": "c", "start_frame": True}, "'start_frame' must be int, got bool True")]:
        with pytest.raises(InputError, match=message):
            parse_batch_line(2, json.dumps(bad), cfg)


def test_video_and_multiview_jobs_never_need_moge():
    def job(**inputs) -> VideoJob:
        return VideoJob(0, "x", InputConfig(num_frames=241, **inputs), TrajectoryConfig())

    by_moge = CacheConfig(generated_frame_depth=GeneratedFrameDepth.moge)
    assert not needs_moge([job(video="v"), job(key_frames="k.npz")], by_moge)
    assert needs_moge([job(video="v"), job(image="a.png", depth="d.npz")], by_moge)  # the image's later chunks


@pytest.mark.parametrize("nproc, extra", [(2, ()), (3, LONG_RUN)], ids=["2proc-auto-121", "3proc-auto-241-fgmask"])
def test_video_under_torchrun_matches_single_process(tmp_path: Path, mode_inputs, cli_reference, nproc: int,
                                                     extra: tuple[str, ...]):
    args = [*video_args(mode_inputs.video), *extra]
    single = cli_reference(args, "demo_video")
    multi = cli_latents(args, tmp_path, name="demo_video", nproc=nproc)
    assert set(single) == {f"chunk{k}" for k in range(1 + bool(extra))}
    assert_latents_match(single, multi, f"video nproc={nproc}")
    record = json.loads((tmp_path / "demo_video.json").read_text())
    assert f"world {nproc}" in record["parallel_layout"] and record["layout"]["tokenizer"] == "group"
    traffic = [line["tokenizer_comm_bytes"] for line in record["ranks"]]
    # The replica shared the 4D render: the lead sent each rank its own source frames, each sent back its warps.
    assert traffic[0]["render_state"] > 0 and all(t["render_gather"] > 0 for t in traffic[1:])


# ---- bad input: one line naming the file and the problem, exit 2, before any model loads -------------------------
def _bad_directory(tmp_path: Path, **replace: dict) -> Path:
    return write_video_source(tmp_path / "bad", num_frames=121, **replace)


def _arrays(num_frames: int = 121) -> dict:
    return small_video(num_frames, HEIGHT, WIDTH)


def _lengths(tmp_path):
    v = _arrays()
    return _bad_directory(tmp_path, **{"camera.npz": {"w2c": v["w2c"][:120], "intrinsics": v["intrinsics"]}}), []


def _extra_key(tmp_path):
    v = _arrays()
    return _bad_directory(tmp_path, **{"depth.npz": {"depth": v["depth"], "confidence": v["depth"]}}), []


def _singular_pose(tmp_path):
    v = _arrays()
    v["w2c"][7, :3, :3] = 0
    return _bad_directory(tmp_path, **{"camera.npz": {"w2c": v["w2c"], "intrinsics": v["intrinsics"]}}), []


def _exr_without_z(tmp_path):
    return write_vipe(tmp_path / "vipe", _arrays(), depth_channel="Y"), []


def _short_for_start(tmp_path):
    return _bad_directory(tmp_path), ["input.start_frame=5"]


def _zero_depth(tmp_path):
    v = _arrays()
    v["depth"][3, 10, 20] = 0.0
    return _bad_directory(tmp_path, **{"depth.npz": {"depth": v["depth"]}}), []


def _pt_format_on_a_folder(tmp_path):
    return _bad_directory(tmp_path), ["input.video_format=pt"]


@pytest.mark.parametrize("make, message", [
    (_lengths, "frame counts differ"),
    (_extra_key, "extra ['confidence']"),
    (_singular_pose, "camera.npz 'w2c': w2c of frame 7 is not invertible"),
    (_exr_without_z, "has no depth channel 'Z'"),
    (_short_for_start, "has 121 frames, but 121 frames from frame 5 were asked for"),
    (_zero_depth, "depth.npz 'depth': frame 3: 1 pixel(s) with zero, negative or non-finite depth"),
    (_pt_format_on_a_folder, "the .pt format needs a file"),
], ids=["lengths", "extra-key", "singular-pose", "exr-without-z", "short-for-start", "zero-depth", "pt-on-folder"])
def test_bad_video_is_refused_in_one_line_before_models_load(tmp_path: Path, make, message: str):
    source, extra = make(tmp_path)
    result = run_cli([*video_args(source), f"output.dir={tmp_path / 'out'}", *extra])
    assert_one_line_refusal(result, message)
    assert str(source) in result.stderr  # the message names the file


def test_the_official_resolution_is_required_of_a_directory(tmp_path: Path):
    result = run_cli(["--config-name", "gen3c_7b", f"input.video={_bad_directory(tmp_path)}",
                      f"output.dir={tmp_path / 'out'}"])
    assert_one_line_refusal(result, "sources are not resized")
    assert "704" in result.stderr and "1280" in result.stderr


@pytest.mark.parametrize("overrides, message", [
    (["--config-name", "demo", "input.video=SOURCE"], "input.image and input.video are both set"),
    (["--config-name", "demo_video", "input.video=null"], "no input is set: give input.image"),
    (["--config-name", "demo_video", "input.video=SOURCE", "input.depth=SOURCE"],
     "applies to image jobs only, but this job is video"),
], ids=["two-sources", "no-source", "image-key-on-a-video-job"])
def test_source_keys_are_refused_unless_exactly_one_mode(tmp_path: Path, mode_inputs, overrides, message: str):
    args = [arg.replace("SOURCE", str(mode_inputs.video)) for arg in overrides]
    result = run_cli([*args, *FAST_DEMO, f"output.dir={tmp_path}"])
    assert_one_line_refusal(result, message)
