"""The runner end to end on the demo scene, its outputs, resumption, and bad input before any model loads."""

from __future__ import annotations

import json
import os
from pathlib import Path

import imageio.v3 as iio
import pytest
import torch
from safetensors.torch import load_file

from gen3c_dist.conditioning.video_conditioner import VideoConditioner
from gen3c_dist.runner.session import run_session
from tests.runner_utils import FAST_DEMO, REPO, compose, crash_on_chunk, run_cli


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
    from importlib import metadata

    import gen3c_dist

    assert record["versions"]["gen3c_dist"] == metadata.version("gen3c_dist") == gen3c_dist.__version__
    assert record["versions"]["gen3c_dist_commit"].split("+")[0] == gen3c_dist.source_commit().split("+")[0]
    assert record["schema_version"] == 2 and record["machine"]["gpu_count"] == 0 and record["machine"]["host"]
    assert isinstance(record["command_line"], list)
    assert record["config"]["sampler"]["steps"] == 3 and "world 1" in record["parallel_layout"]
    latents = load_file(str(tmp_path / "demo_latents.safetensors"))
    assert latents["chunk0"].shape == (1, 16, 16, 8, 12) and torch.isfinite(latents["chunk0"]).all()
    assert not list(tmp_path.glob(".*tmp*")) and not (tmp_path / "demo.partial").exists()


def test_complete_output_is_skipped_on_rerun(tmp_path: Path, monkeypatch):
    cfg = demo_config(tmp_path)
    assert run_session(cfg) == 0
    stamp = (tmp_path / "demo.json").stat().st_mtime_ns
    monkeypatch.setattr(VideoConditioner, "prepare", lambda *a, **k: pytest.fail("a complete output was regenerated"))
    monkeypatch.setattr("gen3c_dist.runner.session.load_models",
                        lambda *a, **k: pytest.fail("models were loaded with nothing to make"))
    assert run_session(cfg) == 0
    assert (tmp_path / "demo.json").stat().st_mtime_ns == stamp


def test_241_frames_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path: Path, monkeypatch):
    whole, crashed = tmp_path / "whole", tmp_path / "crashed"
    assert run_session(demo_config(whole, "input.num_frames=241", "output.save_latents=true")) == 0
    assert iio.imread(whole / "demo.mp4").shape[0] == 241

    with monkeypatch.context() as patch:
        crash_on_chunk(patch, 1)
        with pytest.raises(RuntimeError, match="simulated crash"):
            run_session(demo_config(crashed, "input.num_frames=241", "output.save_latents=true"))
    assert (crashed / "demo.partial" / "state.safetensors").exists() and not (crashed / "demo.mp4").exists()
    assert (crashed / "demo.partial" / "chunk0.safetensors").exists()  # one file per chunk, not a growing snapshot
    assert not list(crashed.glob(".*tmp*"))  # the aborted mp4 streams left nothing behind

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


@pytest.mark.parametrize(
    "override, message",
    [
        ("trajectory.type=sideways", "trajectory.type: Invalid value 'sideways', expected one of [left, right, up, down"),
        ("parallel.tokenizer=everywhere", "parallel.tokenizer: Invalid value 'everywhere', expected one of [group, lead]"),
        ("runtime.dtype=fp64", "runtime.dtype: Invalid value 'fp64', expected one of [auto, bfloat16, bf16"),
        ("sampler.steps=many", "sampler.steps: Value 'many' of type 'str' could not be converted to Integer"),
        ("input.colour=red", "Key 'colour' not in 'InputConfig'"),
    ],
)
def test_config_errors_are_refused_at_composition_in_one_line(override: str, message: str):
    result = run_cli(["--config-name", "demo", override])
    assert result.returncode == 2
    assert result.stderr.strip().startswith("gen3c_dist: invalid configuration:") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_help_lists_every_choice():
    result = run_cli(["--help"])
    assert result.returncode == 0
    assert "parallel.layout = auto    [one of auto | explicit]" in result.stdout
    assert "runtime.dtype = auto    [one of auto | bfloat16 | bf16 | float32 | fp32 | float16]" in result.stdout
    assert "sampler.guidance_policy = official    [one of official | nonofficial_skip_uncond_at_guidance_1]" in result.stdout


def test_cli_shows_resolved_config():
    result = run_cli(["--config-name", "demo", "--cfg", "job", "trajectory.type=zoom_in", "sampler.steps=7"])
    assert result.returncode == 0, result.stderr
    assert "type: zoom_in" in result.stdout and "steps: 7" in result.stdout


def test_presets_compose_and_match_the_python_presets():
    from gen3c_dist.config import MODEL_PRESETS, ModelConfig

    assert compose("gen3c_7b", []).model == MODEL_PRESETS["gen3c_cosmos_7b"] == ModelConfig()
    assert compose("demo", []).model == MODEL_PRESETS["tiny"]
    for name, preset in MODEL_PRESETS.items():  # `model=NAME` on the command line is the Python preset
        assert compose("gen3c_7b", [f"model={name}"]).model == preset
    assert not (REPO / "conf" / "model").exists()  # the presets have one source
    assert os.path.isfile(compose("demo", []).input.image)


@pytest.fixture(scope="module")
def single_process_latents(tmp_path_factory):
    """The single-process reference per set of sampler/input overrides, computed once for the module."""
    cache: dict[tuple, dict] = {}

    def reference(extra: tuple[str, ...]) -> dict:
        if extra not in cache:
            out = tmp_path_factory.mktemp("single")
            result = run_cli(["--config-name", "demo", *FAST_DEMO, "output.save_latents=true", *extra, f"output.dir={out}"])
            assert result.returncode == 0, result.stderr[-3000:]
            cache[extra] = load_file(str(out / "demo_latents.safetensors"))
        return cache[extra]

    return reference


@pytest.mark.parametrize(
    "nproc, layout, auto_degrees",
    [
        (2, [], (2, 1, 1)),  # no layout options: cfg 2
        (3, [], (1, 1, 3)),  # odd world, 4 heads: ring 3
        (4, [], (2, 2, 1)),  # cfg 2 x Ulysses 2
        (2, ["parallel.ulysses=2", "input.num_frames=241"], None),
        (2, ["parallel.cfg=2", "sampler.guidance=2.5"], None),
        (3, ["parallel.ring=3", "runtime.overlap=true"], None),  # the DiT loads beside the replica's render/encodes
        (2, ["parallel.ulysses=2", "parallel.tokenizer=lead", "runtime.overlap=false"], None),
    ],
    ids=["2proc-auto", "3proc-auto", "4proc-auto", "2proc-ulysses-241frames", "2proc-cfg", "3proc-ring-overlap",
         "2proc-ulysses-lead-tokenizer-inline"],
)
def test_demo_under_torchrun_matches_single_process(tmp_path: Path, single_process_latents, nproc: int,
                                                     layout: list[str], auto_degrees):
    extra = tuple(x for x in layout if x.startswith(("sampler.", "input.")))
    multi = tmp_path / "multi"
    common = ["--config-name", "demo", *FAST_DEMO, "output.save_latents=true", *extra]
    result = run_cli([*common, f"output.dir={multi}", *[x for x in layout if x not in extra]], nproc=nproc)
    assert result.returncode == 0, result.stderr[-3000:]
    single_latents = single_process_latents(extra)
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
    degrees = {k: record["layout"][k] for k in ("ulysses", "ring", "cfg")}
    if auto_degrees is not None:
        assert (degrees["cfg"], degrees["ulysses"], degrees["ring"]) == auto_degrees
        assert record["layout"]["mode"] == "auto" and "every rank works on each" in record["layout"]["reason"]
        assert record["layout"]["requested"] == {"data": None, "cfg": None, "ulysses": None, "ring": None}
    # Every rank's DiT traffic per step is in the record, and equals the layout's exact formula.
    from gen3c_dist.config import ParallelConfig, model_preset
    from gen3c_dist.parallel.comm_counter import expected_bytes_per_step
    from gen3c_dist.parallel.layout import plan_layout

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
        # Chunk 0 has 3 encodes (condition, warp, mask of one buffer), one per rank while ranks last.
        assert sum(t.get("encode_latents", 0) > 0 for t in tokenizer_traffic) == min(nproc, 3)
    else:
        assert tokenizer_traffic == [{}] * nproc
    # What a user sees: one layout line at the start, the random-weights warning once, every file at the end.
    assert result.stderr.count("seeded RANDOM weights") == 1, result.stderr[-3000:]
    assert result.stderr.count("INFO gen3c_dist: layout: world") == 1
    for name in ("demo.mp4", "demo_cache.mp4", "demo_latents.safetensors", "demo.json"):
        assert f"wrote {multi / name}" in result.stderr


def test_jobless_and_short_replicas_stay_until_the_end(tmp_path: Path):
    """3 videos on 2 replicas, then 1 video on 3 replicas: every rank exits 0 and every output is complete."""
    image = compose("demo", []).input.image
    jsonl = tmp_path / "three.jsonl"
    jsonl.write_text("\n".join(json.dumps({"image": image, "name": f"v{i}", "seed": i}) for i in range(3)) + "\n")
    batch = run_cli(["--config-name", "demo", *FAST_DEMO, f"batch.jsonl={jsonl}", f"output.dir={tmp_path / 'b'}",
                     "parallel.data=2"], nproc=2)
    assert batch.returncode == 0, batch.stderr[-3000:]
    for i in range(3):
        record = json.loads((tmp_path / "b" / f"v{i}.json").read_text())
        assert record["layout"]["data"] == 2 and iio.imread(tmp_path / "b" / f"v{i}.mp4").shape[0] == 121
    assert json.loads((tmp_path / "b" / "batch_report_shard0.json").read_text())["rejected_or_failed"] == []
    single = run_cli(["--config-name", "demo", *FAST_DEMO, f"output.dir={tmp_path / 's'}", "parallel.data=3"], nproc=3)
    assert single.returncode == 0, single.stderr[-3000:]
    assert json.loads((tmp_path / "s" / "demo.json").read_text())["layout"]["data"] == 3
    assert iio.imread(tmp_path / "s" / "demo.mp4").shape[0] == 121


def test_torchrun_bad_layout_stops_every_rank_with_the_same_message(tmp_path: Path):
    result = run_cli(["--config-name", "demo", *FAST_DEMO, f"output.dir={tmp_path}", "parallel.ulysses=3"], nproc=2)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if "parallel" in line and "ERROR" in line]
    assert len(lines) == 2 and lines[0].split("ERROR", 1)[1] == lines[1].split("ERROR", 1)[1], result.stderr[-2000:]
