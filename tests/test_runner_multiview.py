"""Multi-view through the runner: per-chunk buffer selection, N <= 2, trajectory files, resume, torchrun, batches
of all three modes, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from gen3c_dist.conditioning.multiview_inputs import load_multiview
from gen3c_dist.errors import InputError
from gen3c_dist.runner.session import run_session
from tests.mode_utils import (HEIGHT, WIDTH, assert_latents_match, assert_one_line_refusal, cli_latents,
                              max_relative_difference, multiview_args, multiview_arrays, spy_on_chunks,
                              video_args, write_key_frame_folder, write_multiview_npz)
from tests.runner_utils import FAST_DEMO, compose, crash_on_chunk, run_cli


def multiview_config(out: Path, npz: Path, *extra: str):
    return compose("demo_multiview", [*FAST_DEMO, f"input.key_frames={npz}", f"output.dir={out}", *extra])


def expected_renders(source: Path, *, num_frames: int, trajectory_file=None):
    """The key-frame cache built from the file alone, and its selected renders per chunk."""
    loaded = load_multiview(source, num_frames=num_frames, trajectory_file=trajectory_file)
    cache = loaded.key_frames.cache(filter_points_threshold=0.05, foreground_masking=False)
    return loaded, cache, [cache.render(*loaded.path.chunk(k)) for k in range(loaded.path.num_chunks)]


@pytest.fixture(scope="module")
def long_run(tmp_path_factory, mode_inputs):
    """One in-process 241-frame run over the four key views; every chunk's renders and condition video spied."""
    out = tmp_path_factory.mktemp("long_multiview")
    with pytest.MonkeyPatch.context() as patch:
        seen = spy_on_chunks(patch)
        config = multiview_config(out, mode_inputs.key_frames, "input.num_frames=241", "output.save_latents=true")
        assert run_session(config) == 0
    return out, seen


def test_each_chunk_keeps_the_two_key_views_that_cover_it_best(long_run, mode_inputs):
    out, seen = long_run
    loaded, cache, renders = expected_renders(mode_inputs.key_frames, num_frames=241)
    assert sorted(seen) == [0, 1]
    for k, (warps, masks) in enumerate(renders):
        assert seen[k].warps.shape == (1, 121, 2, 3, HEIGHT, WIDTH)
        assert torch.equal(seen[k].warps, warps) and torch.equal(seen[k].masks, masks)
    # The arc runs from key view 0 to key view 3: each chunk ranks the views again and keeps another pair.
    chosen = [cache.select(*cache.render_all(*loaded.path.chunk(k))).indices_BK[0].tolist() for k in (0, 1)]
    assert chosen[0] != chosen[1] and 0 in chosen[0] and 3 in chosen[1]
    condition0 = seen[0].condition_video
    assert condition0.dtype == torch.float32 and torch.equal(condition0[0, :, 0], loaded.key_frames.images_N3HW[0])
    assert iio.imread(out / "demo_multiview.mp4").shape == (241, HEIGHT, WIDTH, 3)
    assert iio.imread(out / "demo_multiview_cache.mp4").shape == (241, HEIGHT, 3 * WIDTH, 3)  # two buffers + video


def test_241_frames_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path: Path, monkeypatch, long_run,
                                                                     mode_inputs):
    whole, _ = long_run
    config = multiview_config(tmp_path, mode_inputs.key_frames, "input.num_frames=241", "output.save_latents=true")
    with monkeypatch.context() as patch:
        crash_on_chunk(patch, 1)
        with pytest.raises(RuntimeError, match="simulated crash"):
            run_session(config)
    assert (tmp_path / "demo_multiview.partial" / "chunk0.safetensors").exists()
    assert run_session(config) == 0
    a = load_file(str(whole / "demo_multiview_latents.safetensors"))
    b = load_file(str(tmp_path / "demo_multiview_latents.safetensors"))
    assert set(a) == set(b) == {"chunk0", "chunk1"}
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_two_key_views_skip_the_ranking_and_a_trajectory_file_replaces_w2cs_all(tmp_path: Path, monkeypatch):
    npz = write_multiview_npz(tmp_path / "two.npz", multiview_arrays(121, views=[2, 0]))
    path = multiview_arrays(121)
    reversed_w2cs = path["w2cs_all"][::-1].copy()  # the arc the other way round, from view 3 to view 0
    np.savez(tmp_path / "path.npz", w2c=reversed_w2cs, intrinsics=path["K_key_frames"][0])
    seen = spy_on_chunks(monkeypatch)
    assert run_session(multiview_config(tmp_path / "out", npz, f"trajectory.file={tmp_path / 'path.npz'}")) == 0
    loaded, cache, renders = expected_renders(npz, num_frames=121, trajectory_file=tmp_path / "path.npz")
    assert torch.equal(loaded.path.w2cs_F44, torch.from_numpy(reversed_w2cs))
    selection = cache.select(*cache.render_all(*loaded.path.chunk(0)))
    assert selection.scores_BN is None and selection.indices_BK[0].tolist() == [0, 1]  # no ranking: key order
    assert torch.equal(seen[0].warps, renders[0][0]) and torch.equal(seen[0].masks, renders[0][1])


def test_a_key_frame_folder_with_a_trajectory_file(tmp_path: Path, monkeypatch):
    arrays = multiview_arrays(121)
    folder = write_key_frame_folder(tmp_path / "scene", arrays)
    np.savez(tmp_path / "path.npz", w2c=arrays["w2cs_all"], intrinsics=arrays["K_key_frames"][-1])
    with pytest.raises(InputError, match="give the target path as a trajectory file"):
        run_session(multiview_config(tmp_path / "out", folder))
    seen = spy_on_chunks(monkeypatch)
    assert run_session(multiview_config(tmp_path / "out", folder, f"trajectory.file={tmp_path / 'path.npz'}")) == 0
    loaded, _, renders = expected_renders(folder, num_frames=121, trajectory_file=tmp_path / "path.npz")
    # The same pixels (u8 / 127.5 - 1, rounded once to float32 here, in two steps by the demo scene).
    assert torch.allclose(loaded.key_frames.images_N3HW, torch.from_numpy(arrays["images_key_frames"]), rtol=0,
                          atol=1e-7)
    assert torch.equal(seen[0].warps, renders[0][0]) and torch.equal(seen[0].masks, renders[0][1])


@pytest.mark.parametrize("nproc, frames", [(2, 241), (3, 121)], ids=["2proc-auto-241", "3proc-auto-121"])
def test_multiview_under_torchrun_matches_single_process(tmp_path: Path, mode_inputs, cli_reference, nproc: int,
                                                         frames: int):
    args = [*multiview_args(mode_inputs.key_frames), f"input.num_frames={frames}"]
    single = cli_reference(args, "demo_multiview")
    multi = cli_latents(args, tmp_path, name="demo_multiview", nproc=nproc)
    assert set(single) == {f"chunk{k}" for k in range((frames - 1) // 120)}
    assert_latents_match(single, multi, f"multiview nproc={nproc}")
    record = json.loads((tmp_path / "demo_multiview.json").read_text())
    assert f"world {nproc}" in record["parallel_layout"] and record["layout"]["tokenizer"] == "group"
    traffic = [line["tokenizer_comm_bytes"] for line in record["ranks"]]
    # The replica shared the all-N render: the key frames went to every rank, each sent back its warps.
    assert traffic[0]["render_state"] > 0 and all(t["render_gather"] > 0 for t in traffic[1:])


def test_a_batch_mixes_the_three_modes_and_rejects_bad_lines(tmp_path: Path, mode_inputs, cli_reference):
    """One JSONL: an image line (the preset's input), a video line, a multi-view line, two bad lines."""
    lines = [
        {"name": "image", "seed": 1},
        {"name": "video", "video": str(mode_inputs.video)},
        {"name": "multiview", "key_frames": str(mode_inputs.key_frames)},
        {"name": "two", "video": str(mode_inputs.video), "image": compose("demo", []).input.image},
        {"name": "missing", "key_frames": str(tmp_path / "missing.npz")},
    ]
    jsonl = tmp_path / "batch.jsonl"
    jsonl.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    out = tmp_path / "out"
    result = run_cli(["--config-name", "demo", *FAST_DEMO, f"batch.jsonl={jsonl}", f"output.dir={out}",
                      "output.save_latents=true"], nproc=2)
    assert result.returncode == 1, result.stderr[-3000:]  # two lines were rejected, the others made
    report = json.loads((out / "batch_report_shard0.json").read_text())
    errors = {entry["index"]: entry["error"] for entry in report["rejected_or_failed"]}
    assert set(errors) == {3, 4}
    assert "input.image and input.video are both set" in errors[3]
    assert "input.key_frames" in errors[4] and "no such file or folder" in errors[4]
    references = {"image": cli_reference(["--config-name", "demo", *FAST_DEMO], "demo"),
                  "video": cli_reference(video_args(mode_inputs.video), "demo_video"),
                  "multiview": cli_reference(multiview_args(mode_inputs.key_frames), "demo_multiview")}
    for name, reference in references.items():
        latents = load_file(str(out / f"{name}_latents.safetensors"))
        difference = max_relative_difference(reference["chunk0"], latents["chunk0"])
        print(f"batch line {name} (nproc=2): max relative latent difference {difference:.3e}")
        assert difference < 1e-5, name
        record = json.loads((out / f"{name}.json").read_text())
        assert record["job"]["input"][{"image": "image", "video": "video", "multiview": "key_frames"}[name]]
    assert json.loads((out / "video.json").read_text())["job"]["input"]["depth"] is None  # not the preset's


# ---- bad input: one line naming the file and the problem, exit 2, before any model loads -------------------------
def _sizes(arrays):
    arrays["depth_key_frames"] = arrays["depth_key_frames"][..., ::2, ::2]
    return "'depth_key_frames': frames are [32, 48] (H, W) but the images are [64, 96]"


def _no_key_frames(arrays):
    for key in ("images_key_frames", "depth_key_frames", "mask_key_frames", "K_key_frames", "w2cs_key_frames"):
        arrays[key] = arrays[key][:0]
    return "holds no key frames (N = 0)"


def _lengths(arrays):
    arrays["w2cs_key_frames"] = arrays["w2cs_key_frames"][:3]
    return "key-frame arrays have different lengths"


def _singular_pose(arrays):
    arrays["w2cs_key_frames"][1, :3, :3] = 0
    return "'w2cs_key_frames': w2c of frame 1 is not invertible"


def _short_path(arrays):
    arrays["w2cs_all"] = arrays["w2cs_all"][:200]
    return "'w2cs_all': 241 frames are requested but it has 200 poses"


@pytest.mark.parametrize("break_it", [_sizes, _no_key_frames, _lengths, _singular_pose, _short_path],
                         ids=["sizes", "n0", "lengths", "singular-pose", "short-path"])
def test_bad_key_frames_are_refused_in_one_line_before_models_load(tmp_path: Path, break_it):
    arrays = multiview_arrays()
    message = break_it(arrays)
    npz = write_multiview_npz(tmp_path / "bad.npz", arrays)
    result = run_cli([*multiview_args(npz), "input.num_frames=241", f"output.dir={tmp_path / 'out'}"])
    assert_one_line_refusal(result, message)
    assert str(npz) in result.stderr  # the message names the file


def test_key_frames_must_have_the_runs_size(tmp_path: Path, mode_inputs):
    result = run_cli(["--config-name", "gen3c_7b", f"input.key_frames={mode_inputs.key_frames}",
                      f"output.dir={tmp_path}"])
    assert_one_line_refusal(result, "key frames are 64x96 but the run is 704x1280")


def test_every_rank_refuses_bad_key_frames_with_the_same_line(tmp_path: Path):
    arrays = multiview_arrays()
    message = _no_key_frames(arrays)
    npz = write_multiview_npz(tmp_path / "empty.npz", arrays)
    result = run_cli([*multiview_args(npz), f"output.dir={tmp_path / 'out'}"], nproc=2)
    assert_one_line_refusal(result, message, ranks=2)
