"""The runner end to end on the demo scene, its outputs, resumption, and bad input before any model loads."""

from __future__ import annotations

import json
import os
from pathlib import Path

import imageio.v3 as iio
import pytest
import torch
from safetensors.torch import load_file

from gen3c_dist.runner.conditioning_stage import VideoConditioner
from gen3c_dist.runner.session import run_session
from tests.runner_utils import FAST_DEMO, compose, run_cli


def demo_config(tmp_path: Path, *extra: str):
    return compose("demo", [*FAST_DEMO, f"output.dir={tmp_path}", *extra])


def test_demo_writes_video_preview_latents_and_record(tmp_path: Path):
    cfg = demo_config(tmp_path, "output.save_latents=true")
    assert run_session(cfg) == 0
    video = iio.imread(tmp_path / "demo.mp4")
    assert video.shape == (121, 64, 96, 3)
    preview = iio.imread(tmp_path / "demo_cache.mp4")
    assert preview.shape == (121, 64, 192, 3)  # one buffer left of the video
    record = json.loads((tmp_path / "demo.json").read_text())
    assert record["frames"] == 121 and record["seed"] == 1 and record["random_weights"] is True
    assert {"conditioning", "encode", "denoise", "decode", "write"} <= set(record["stages_s"])
    assert len(record["steps_s"]) == 3 and record["versions"]["torch"] == torch.__version__
    assert record["config"]["sampler"]["steps"] == 3 and "world 1" in record["parallel_layout"]
    latents = load_file(str(tmp_path / "demo_latents.safetensors"))
    assert latents["chunk0"].shape == (1, 16, 16, 8, 12) and torch.isfinite(latents["chunk0"]).all()
    assert not list(tmp_path.glob(".*tmp*")) and not (tmp_path / "demo.partial").exists()


def test_complete_output_is_skipped_on_rerun(tmp_path: Path, monkeypatch):
    cfg = demo_config(tmp_path)
    assert run_session(cfg) == 0
    stamp = (tmp_path / "demo.json").stat().st_mtime_ns
    monkeypatch.setattr(VideoConditioner, "prepare", lambda *a, **k: pytest.fail("a complete output was regenerated"))
    from gen3c_dist.runner.group_runtime import Group

    monkeypatch.setattr(Group, "load_models", lambda *a, **k: pytest.fail("models were loaded with nothing to make"))
    assert run_session(cfg) == 0
    assert (tmp_path / "demo.json").stat().st_mtime_ns == stamp


def test_241_frames_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path: Path, monkeypatch):
    whole, crashed = tmp_path / "whole", tmp_path / "crashed"
    assert run_session(demo_config(whole, "input.num_frames=241", "output.save_latents=true")) == 0
    assert iio.imread(whole / "demo.mp4").shape[0] == 241

    original_chunk = VideoConditioner.chunk

    def crash_on_second_chunk(self, chunk_index, last_frame):
        if chunk_index == 1:
            raise RuntimeError("simulated crash after the first chunk")
        return original_chunk(self, chunk_index, last_frame)

    monkeypatch.setattr(VideoConditioner, "chunk", crash_on_second_chunk)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_session(demo_config(crashed, "input.num_frames=241", "output.save_latents=true"))
    assert (crashed / "demo.partial" / "state.safetensors").exists() and not (crashed / "demo.mp4").exists()
    assert (crashed / "demo.partial" / "chunk0.safetensors").exists()  # one file per chunk, not a growing snapshot
    assert not list(crashed.glob(".*tmp*"))  # the aborted mp4 streams left nothing behind

    monkeypatch.setattr(VideoConditioner, "chunk", original_chunk)
    assert run_session(demo_config(crashed, "input.num_frames=241", "output.save_latents=true")) == 0
    a, b = load_file(str(whole / "demo_latents.safetensors")), load_file(str(crashed / "demo_latents.safetensors"))
    assert set(a) == {"chunk0", "chunk1"}
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert (iio.imread(whole / "demo.mp4") == iio.imread(crashed / "demo.mp4")).all()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["input.image=/nonexistent/photo.png"], "input.image /nonexistent/photo.png: no such file"),
        (["input.num_frames=200"], "nearest valid counts are 121 and 241"),
        (["output.name=../escape"], "escapes the output folder"),
        (["trajectory.type=sideways"], "trajectory.type='sideways' is not one of"),
        (["trajectory.distance=-1"], "trajectory.distance=-1"),
        (["parallel.ulysses=2"], "parallel"),
    ],
)
def test_bad_input_stops_before_models_load(tmp_path: Path, monkeypatch, overrides, message):
    monkeypatch.setattr("gen3c_dist.runner.models.load_dit_for_run", lambda *a, **k: pytest.fail("model loaded"))
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        run_session(demo_config(tmp_path, *overrides))


def test_unwritable_output_folder(tmp_path: Path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ValueError, match="output.dir .* is not writable"):
        run_session(demo_config(tmp_path, f"output.dir={blocker}/sub"))


def test_batch_reports_bad_lines_and_runs_the_others(tmp_path: Path):
    image = compose("demo", []).input.image
    lines = [
        {"image": image, "name": "good", "seed": 3, "trajectory": "zoom_in", "distance": 0.2},
        {"image": image, "name": "typo", "colour": "red"},
        {"image": image, "name": "wrongtype", "frames": "121"},
        {"image": image, "name": "../outside"},
        {"image": "/missing.png", "name": "missing"},
    ]
    jsonl = tmp_path / "batch.jsonl"
    jsonl.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    out = tmp_path / "out"
    assert run_session(demo_config(out, f"batch.jsonl={jsonl}")) == 1
    assert iio.imread(out / "good.mp4").shape[0] == 121
    assert json.loads((out / "good.json").read_text())["seed"] == 3
    report = json.loads((out / "batch_report_shard0.json").read_text())
    errors = {entry["index"]: entry["error"] for entry in report["rejected_or_failed"]}
    assert set(errors) == {1, 2, 3, 4}
    assert "unknown keys ['colour']" in errors[1] and "'frames' must be int" in errors[2]
    assert "escapes the output folder" in errors[3] and "no such file" in errors[4]


def test_cli_bad_input_is_one_clear_message(tmp_path: Path):
    result = run_cli(["--config-name", "demo", *FAST_DEMO, f"output.dir={tmp_path}", "input.num_frames=122"])
    assert result.returncode == 2
    assert "input.num_frames=122 is not 120K+1; the nearest valid counts are 121 and 241" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_shows_resolved_config():
    result = run_cli(["--config-name", "demo", "--cfg", "job", "trajectory.type=zoom_in", "sampler.steps=7"])
    assert result.returncode == 0, result.stderr
    assert "type: zoom_in" in result.stdout and "steps: 7" in result.stdout


def test_presets_compose_and_match_the_python_presets():
    from gen3c_dist.config import MODEL_PRESETS

    assert compose("gen3c_7b", []).model == MODEL_PRESETS["gen3c_cosmos_7b"]
    assert compose("demo", []).model == MODEL_PRESETS["tiny"]
    assert os.path.isfile(compose("demo", []).input.image)


@pytest.mark.parametrize(
    "nproc, layout",
    [
        (2, ["parallel.ulysses=2", "input.num_frames=241"]),
        (2, ["parallel.cfg=2", "sampler.guidance=2.5"]),
        (3, ["parallel.ring=3", "runtime.overlap=true"]),  # the DiT loads beside the replica's render/encodes
        (2, ["parallel.ulysses=2", "parallel.tokenizer=lead", "runtime.overlap=false"]),
    ],
    ids=["2proc-ulysses-241frames", "2proc-cfg", "3proc-ring-overlap", "2proc-ulysses-lead-tokenizer-inline"],
)
def test_demo_under_torchrun_matches_single_process(tmp_path: Path, nproc: int, layout: list[str]):
    extra = [x for x in layout if x.startswith(("sampler.", "input."))]
    single, multi = tmp_path / "single", tmp_path / "multi"
    common = ["--config-name", "demo", *FAST_DEMO, "output.save_latents=true", *extra]
    result = run_cli([*common, f"output.dir={single}"])
    assert result.returncode == 0, result.stderr[-3000:]
    result = run_cli([*common, f"output.dir={multi}", *layout], nproc=nproc)
    assert result.returncode == 0, result.stderr[-3000:]
    single_latents = load_file(str(single / "demo_latents.safetensors"))
    multi_latents = load_file(str(multi / "demo_latents.safetensors"))
    a, b = single_latents["chunk0"], multi_latents["chunk0"]
    assert ((a - b).abs().max() / a.abs().max()).item() < 1e-5
    if "chunk1" in single_latents:
        # Chunk 1 is conditioned on chunk 0's last decoded uint8 frame. The sequence-parallel decode equals the
        # single decode to fp32 rounding, which can flip a rare value by one uint8 level, so allow that much.
        a, b = single_latents["chunk1"], multi_latents["chunk1"]
        assert ((a - b).abs().max() / a.abs().max()).item() < 1e-2
    record = json.loads((multi / "demo.json").read_text())
    assert f"world {nproc}" in record["parallel_layout"]
    # Every rank's DiT traffic per step is in the record, and equals the layout's exact formula.
    from gen3c_dist.config import ParallelConfig, model_preset
    from gen3c_dist.parallel.comm_counter import expected_bytes_per_step
    from gen3c_dist.parallel.layout import plan_layout

    degrees = {k: record["layout"][k] for k in ("ulysses", "ring", "cfg")}
    plan = plan_layout(ParallelConfig(**degrees), world_size=nproc, rank=0, num_heads=4, guidance_runs_both=True)
    expected = expected_bytes_per_step(plan, model_cfg=model_preset("tiny"), latent_BCTHW=(1, 16, 16, 8, 12), element_size=4)
    assert [line["rank"] for line in record["ranks"]] == list(range(nproc))
    for line in record["ranks"]:
        assert line["comm_bytes_per_step"] == expected and line["peak_memory_bytes"] > 0
    assert record["tokens"] == 16 * 4 * 6 and record["world_size"] == nproc
    assert record["layout"]["overlap"] is ("runtime.overlap=true" in layout)
    tokenizer_traffic = [line["tokenizer_comm_bytes"] for line in record["ranks"]]
    if record["layout"]["tokenizer"] == "group":  # the encodes and the decode were shared
        assert tokenizer_traffic[0]["encode_inputs"] > 0 and tokenizer_traffic[0]["decode_halo"] > 0
        assert tokenizer_traffic[0]["render_state"] > 0 and tokenizer_traffic[1]["render_gather"] > 0
        assert all(t["encode_latents"] > 0 for t in tokenizer_traffic)
    else:
        assert tokenizer_traffic == [{}] * nproc


def test_torchrun_bad_layout_stops_every_rank_with_the_same_message(tmp_path: Path):
    result = run_cli(["--config-name", "demo", *FAST_DEMO, f"output.dir={tmp_path}", "parallel.ulysses=3"], nproc=2)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if "parallel" in line and "ERROR" in line]
    assert len(lines) == 2 and lines[0].split("ERROR", 1)[1] == lines[1].split("ERROR", 1)[1], result.stderr[-2000:]
