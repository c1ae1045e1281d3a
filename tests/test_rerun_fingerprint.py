"""A rerun skips or resumes only what was made with the same settings; anything else is refused in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from gen3c_dist.conditioning.video_conditioner import VideoConditioner
from gen3c_dist.errors import InputError
from gen3c_dist.runner.fingerprint import checkpoint_identity, content_digest, video_fingerprint
from gen3c_dist.runner.jobs import single_job
from gen3c_dist.runner.session import run_session
from tests.runner_utils import FAST_DEMO, compose, crash_on_chunk, run_cli

HOW_ON = "; to keep it, choose a new output.name; to replace it, add output.overwrite=true"


def demo(out: Path, *extra: str):
    return compose("demo", [*FAST_DEMO, f"output.dir={out}", *extra])


def fingerprint(*extra: str):
    cfg = compose("demo", [*FAST_DEMO, *extra])
    return video_fingerprint(single_job(cfg), cfg, dtype="float32")


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> Path:
    """One demo video, made once for the module's reruns."""
    out = tmp_path_factory.mktemp("made")
    assert run_session(demo(out)) == 0
    return out


def no_models(monkeypatch) -> None:
    monkeypatch.setattr("gen3c_dist.runner.session.load_models",
                        lambda *a, **k: pytest.fail("models were loaded for a run that must stop or skip first"))


@pytest.mark.parametrize("override, key", [
    ("input.seed=2", "input.seed"),
    ("trajectory.type=right", "trajectory.type"),
    ("sampler.steps=4", "sampler.steps"),
    ("input.prompt='a quiet street'", "input.prompt"),
])
def test_a_rerun_with_other_settings_is_refused_naming_the_key(made: Path, monkeypatch, override: str, key: str):
    no_models(monkeypatch)
    with pytest.raises(InputError) as err:
        run_session(demo(made, override))
    assert str(err.value) == f"{made / 'demo.json'} was made with other settings ({key} differs){HOW_ON}"


def test_the_record_holds_the_fingerprint(made: Path):
    record = json.loads((made / "demo.json").read_text())
    assert record["fingerprint"] == fingerprint().record()
    parts = record["fingerprint"]["parts"]
    assert parts["input.seed"] == "1" and parts["sampler.steps"] == "3" and parts["runtime.dtype"] == '"float32"'
    assert parts["input.image"] == content_digest(compose("demo", []).input.image)


def test_a_layout_or_speed_change_still_skips(made: Path, monkeypatch):
    no_models(monkeypatch)
    stamp = (made / "demo.json").stat().st_mtime_ns
    for extra in (["parallel.tokenizer=lead"], ["runtime.overlap=true", "distributed.timeout_s=30"],
                  ["output.save_latents=true", "text.cache_dir=/tmp/embeddings"]):
        assert run_session(demo(made, *extra)) == 0
    assert (made / "demo.json").stat().st_mtime_ns == stamp


def test_two_processes_skip_what_one_process_made(made: Path):
    stamp = (made / "demo.json").stat().st_mtime_ns
    result = run_cli(["--config-name", "demo", *FAST_DEMO, f"output.dir={made}"], nproc=2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "demo: complete output exists, made with the same settings; skipped" in result.stderr
    assert "DiT: seeded random weights" not in result.stderr and (made / "demo.json").stat().st_mtime_ns == stamp


def test_overwrite_replaces_the_old_output(made: Path, tmp_path: Path):
    out = tmp_path / "out"
    shutil.copytree(made, out)
    (out / "demo.partial").mkdir()  # a stale partial state goes too
    before = iio.imread(out / "demo.mp4")
    assert run_session(demo(out, "input.seed=2", "output.overwrite=true")) == 0
    record = json.loads((out / "demo.json").read_text())
    assert record["seed"] == 2 and record["fingerprint"]["parts"]["input.seed"] == "2"
    assert not (iio.imread(out / "demo.mp4") == before).all() and not (out / "demo.partial").exists()


def test_a_changed_input_file_is_refused_and_a_moved_one_is_not(made: Path, tmp_path: Path, monkeypatch):
    image = tmp_path / "scene.png"
    shutil.copy(compose("demo", []).input.image, image)
    out = tmp_path / "out"
    assert run_session(demo(out, f"input.image={image}")) == 0
    no_models(monkeypatch)
    moved = tmp_path / "elsewhere" / "scene.png"
    moved.parent.mkdir()
    shutil.copy(image, moved)
    assert run_session(demo(out, f"input.image={moved}")) == 0  # same bytes elsewhere: skipped
    pixels = iio.imread(image)
    pixels[0, 0] = 255 - pixels[0, 0]
    iio.imwrite(image, pixels)
    with pytest.raises(InputError, match=r"\(input\.image differs\)"):
        run_session(demo(out, f"input.image={image}"))


def test_a_partial_run_resumes_across_layouts_and_is_refused_with_another_seed(tmp_path: Path, monkeypatch):
    with monkeypatch.context() as patch:
        crash_on_chunk(patch, 1)
        with pytest.raises(RuntimeError, match="simulated crash"):
            run_session(demo(tmp_path, "input.num_frames=241"))
    with monkeypatch.context() as patch:
        no_models(patch)
        with pytest.raises(InputError) as err:
            run_session(demo(tmp_path, "input.num_frames=241", "input.seed=5"))
    assert str(err.value) == f"{tmp_path / 'demo.partial'} was made with other settings (input.seed differs){HOW_ON}"
    prepared: list[int] = []
    original_prepare = VideoConditioner.prepare
    monkeypatch.setattr(VideoConditioner, "prepare",
                        lambda self, k, *a: (prepared.append(k), original_prepare(self, k, *a))[1])
    assert run_session(demo(tmp_path, "input.num_frames=241", "parallel.tokenizer=lead")) == 0
    assert prepared == [1]  # chunk 0 came from the partial state
    assert iio.imread(tmp_path / "demo.mp4").shape[0] == 241


def test_a_batch_line_made_with_other_settings_is_reported_and_the_others_run(made: Path, tmp_path: Path):
    out = tmp_path / "out"
    shutil.copytree(made, out)
    image = compose("demo", []).input.image
    jsonl = tmp_path / "batch.jsonl"
    jsonl.write_text("\n".join(json.dumps(line) for line in [{"image": image, "name": "demo", "seed": 9},
                                                              {"image": image, "name": "fresh"}]) + "\n")
    assert run_session(demo(out, f"batch.jsonl={jsonl}")) == 1
    report = json.loads((out / "batch_report_shard0.json").read_text())["rejected_or_failed"]
    assert report == [{"index": 0, "error": f"batch line 1 (demo): {out / 'demo.json'} was made with other settings "
                                            f"(input.seed differs){HOW_ON}"}]
    assert (out / "fresh.json").exists()


# ---- what the fingerprint holds ------------------------------------------------------------------------------
def test_excluded_fields_do_not_change_it_and_included_ones_do():
    base = fingerprint().parts
    for extra in ("parallel.ulysses=2", "parallel.tokenizer=lead", "runtime.overlap=true", "runtime.offload=true",
                  "runtime.progress=true", "runtime.device=cpu", "output.name=other", "output.save_latents=true",
                  "distributed.timeout_s=5", "batch.num_shards=2", "text.cache_dir=/x", "output.overwrite=true"):
        assert fingerprint(extra).parts == base, extra
    for extra, key in (("model.mlp_ratio=2", "model.mlp_ratio"), ("cache.noise_aug_strength=0.1",
                       "cache.noise_aug_strength"), ("sampler.guidance=2", "sampler.guidance"),
                       ("checkpoints.random_seed=3", "checkpoints.random_seed"), ("text.max_length=77",
                       "text.max_length"), ("input.height=128", "input.height"),
                       ("tokenizer.backend=torchscript", "tokenizer.backend")):
        assert fingerprint(extra).differing(base) == [key], extra
    cfg = compose("demo", FAST_DEMO)
    assert video_fingerprint(single_job(cfg), cfg, dtype="bfloat16").differing(base) == ["runtime.dtype"]


def test_folders_are_hashed_file_by_file_and_checkpoints_by_size_and_mtime(tmp_path: Path):
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        (folder / "sub").mkdir(parents=True)
        (folder / "sub" / "0001.png").write_bytes(b"one")
        (folder / "0002.png").write_bytes(b"two")
    assert content_digest(a) == content_digest(b)  # same files, same names: the place does not matter
    (b / "0002.png").rename(b / "0003.png")
    assert content_digest(a) != content_digest(b)  # a renamed frame is another input
    weights = tmp_path / "model.pt"
    weights.write_bytes(np.zeros(10).tobytes())
    identity = checkpoint_identity(str(weights))
    assert checkpoint_identity(str(weights)) == identity
    import os

    os.utime(weights, ns=(0, 10**9))
    assert checkpoint_identity(str(weights)) != identity
    folder_identity = checkpoint_identity(str(a))
    (a / "extra.bin").write_bytes(b"x")
    assert checkpoint_identity(str(a)) != folder_identity
