"""DiT construction and checkpoint loading: parameter count, official layout, converter, and bad checkpoints."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from gen3c_dist import convert
from gen3c_dist.config import ModelConfig, model_preset
from gen3c_dist.model.checkpoint_io import CheckpointError
from gen3c_dist.model.dit import GEN3CDiT, count_parameters
from gen3c_dist.model.weights import load_dit, random_dit
from tests.parity.fixture_case import DEFAULT_FIXTURE_DIR

CASE = DEFAULT_FIXTURE_DIR / "dit_forward" / "b1_fb2_d96_t4h8w12"


def fixture_config() -> ModelConfig:
    return ModelConfig.from_official(json.loads(CASE.with_suffix(".json").read_text())["config"])


def fixture_inputs() -> dict:
    t = load_file(str(CASE.with_suffix(".safetensors")))
    return dict(
        x_BCTHW=t["x"],
        timesteps_B=t["timesteps"],
        crossattn_emb_BLcCt=t["crossattn_emb"],
        condition_video_input_mask_B1THW=t["condition_video_input_mask"],
        condition_video_pose_BCTHW=t["condition_video_pose"],
        padding_mask_B1HW=t["padding_mask"],
        fps=24.0,
    )


def run(model: GEN3CDiT) -> torch.Tensor:
    with torch.inference_mode():
        inputs = fixture_inputs()
        x, t, c = inputs.pop("x_BCTHW"), inputs.pop("timesteps_B"), inputs.pop("crossattn_emb_BLcCt")
        return model(x, t, c, **inputs)


@pytest.fixture()
def official_pt(tmp_path: Path) -> Path:
    """The fixture weights written in the official model.pt layout, with the keys a real file also carries."""
    state = load_file(str(CASE) + ".weights.safetensors")
    state["logvar.0.freqs"] = torch.randn(128)
    state["logvar.1.weight"] = torch.randn(1, 128)
    state["net.blocks.block0.blocks.0.block.attn.attn_op._extra_state"] = io.BytesIO(b"te-fp8-metadata")
    path = tmp_path / "model.pt"
    torch.save({"model": state}, path)
    return path


def test_7b_preset_has_the_official_parameter_count():
    with torch.device("meta"):
        model = GEN3CDiT(model_preset("gen3c_cosmos_7b"))
    assert count_parameters(model) == 7_237_257_216


def test_official_pt_loads_like_the_safetensors_fixture(official_pt: Path):
    direct = run(load_dit(str(CASE) + ".weights.safetensors", fixture_config()))
    from_pt = run(load_dit(official_pt, fixture_config()))
    assert torch.equal(direct, from_pt)
    assert direct.abs().max() > 0.1


def test_converted_checkpoint_is_bit_identical(official_pt: Path, tmp_path: Path):
    out = tmp_path / "converted"
    config_json = tmp_path / "official_config.json"
    config_json.write_text(json.dumps(json.loads(CASE.with_suffix(".json").read_text())["config"]))
    # A tiny shard size forces several shards and an index.
    args = ["--source", str(official_pt), "--output", str(out), "--model-config", str(config_json), "--shard-size-gb", "0.0001"]
    assert convert.main(args) == 0
    config = fixture_config()
    assert len(list(out.glob("model-*.safetensors"))) > 1
    assert not list(tmp_path.glob(".converted.tmp-*"))
    reloaded = run(load_dit(out, None))
    assert torch.equal(reloaded, run(load_dit(official_pt, config)))


def test_converter_refuses_existing_output_and_leaves_nothing_on_failure(official_pt: Path, tmp_path: Path):
    existing = tmp_path / "exists"
    existing.mkdir()
    assert convert.main(["--source", str(official_pt), "--output", str(existing)]) == 2
    target = tmp_path / "never"
    # The 7B preset does not match the tiny weights: nothing may be left behind.
    assert convert.main(["--source", str(official_pt), "--output", str(target), "--preset", "gen3c_cosmos_7b"]) == 2
    assert not target.exists() and not list(tmp_path.glob(".never*"))


def test_missing_file_is_named(tmp_path: Path):
    with pytest.raises(CheckpointError, match="nope.pt: no such file"):
        load_dit(tmp_path / "nope.pt", fixture_config())


def test_truncated_torch_file_is_named(official_pt: Path):
    data = official_pt.read_bytes()
    official_pt.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"model\.pt: truncated"):
        load_dit(official_pt, fixture_config())


def test_truncated_safetensors_is_named(tmp_path: Path):
    path = tmp_path / "w.safetensors"
    shutil.copy(str(CASE) + ".weights.safetensors", path)
    data = path.read_bytes()
    path.write_bytes(data[:-1000])
    with pytest.raises(CheckpointError, match=r"w\.safetensors.*truncated"):
        load_dit(path, fixture_config())


def test_checkpoint_of_another_model_names_keys(tmp_path: Path):
    state = load_file(str(CASE) + ".weights.safetensors")
    state.pop("net.final_layer.linear.weight")
    state["net.some_other_model.weight"] = torch.zeros(3)
    path = tmp_path / "other.safetensors"
    save_file(state, str(path))
    with pytest.raises(CheckpointError) as err:
        load_dit(path, fixture_config())
    message = str(err.value)
    assert "other.safetensors" in message and "final_layer.linear.weight" in message and "some_other_model" in message


def test_config_that_does_not_match_the_checkpoint(tmp_path: Path):
    wrong = ModelConfig.from_official({**json.loads(CASE.with_suffix(".json").read_text())["config"], "model_channels": 192})
    with pytest.raises(CheckpointError, match=r"shape mismatches"):
        load_dit(str(CASE) + ".weights.safetensors", wrong)


def test_random_dit_is_seeded_and_not_degenerate():
    cfg = model_preset("tiny")
    a, b = random_dit(cfg, seed=3), random_dit(cfg, seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    c = random_dit(cfg, seed=4)
    assert not torch.equal(next(a.parameters()), next(c.parameters()))
