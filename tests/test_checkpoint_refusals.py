"""Every checkpoint refusal is one line: the file, what is wrong with it, and the safe way on.

Never torch's advice to pass ``weights_only=False``, and never an unpickled object: a file that stores Python
objects beside its tensors is refused by every loader (DiT, tokenizer, MoGe, T5); ``gen3c_dist.convert
--allow-pickle`` is the one explicit way to turn a trusted one into safetensors.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from gen3c_dist import convert
from gen3c_dist.conditioning.depth import load_moge
from gen3c_dist.errors import InputError
from gen3c_dist.model.safe_load import DIT_PICKLE_WAY_ON, DIT_WAY_ON, OFFICIAL_DOWNLOAD
from gen3c_dist.model.tokenizer.loading import load_mean_std, load_torchscript
from gen3c_dist.model.weights import load_dit
from tests.runner_utils import FAST_DEMO, run_cli
from tests.test_dit_weights import CASE, fixture_config

PICKLED = "holds pickled Python objects besides tensors (argparse.Namespace); the loader never unpickles them"
NOT_TORCH = "not a torch or safetensors file"


def sprung() -> None:
    raise AssertionError("a loader unpickled a Python object")


class Trap:
    """Unpickling this would run :func:`sprung`: the test fails if any loader ever does."""

    def __reduce__(self):
        return (sprung, ())


def pickled(path: Path, payload: dict) -> Path:
    torch.save({**payload, "args": argparse.Namespace(lr=1e-4)}, path)
    return path


def random_bytes(path: Path) -> Path:
    path.write_bytes(os.urandom(4096))
    return path


def truncated(path: Path, payload: object) -> Path:
    torch.save(payload, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def check_line(err: pytest.ExceptionInfo, label: str, file: Path, problem: str, way_on: str) -> None:
    message = str(err.value)
    assert isinstance(err.value, InputError)
    assert message == f"{label} {file}: {problem}; {way_on}", message
    assert "\n" not in message and "weights_only" not in message


def dit_state() -> dict:
    return {"model": load_file(str(CASE) + ".weights.safetensors")}


@pytest.mark.parametrize("kind", ["pickled", "random", "truncated", "trap"])
def test_dit_refusals(tmp_path: Path, kind: str):
    path = tmp_path / "model.pt"
    if kind == "pickled":
        pickled(path, dit_state())
    elif kind == "random":
        random_bytes(path)
    elif kind == "truncated":
        truncated(path, dit_state())
    else:
        torch.save({"model": {"x": Trap()}}, path)
    problem = {"pickled": PICKLED, "random": NOT_TORCH, "truncated": "truncated (its torch zip archive has no end)",
               "trap": "holds pickled Python objects besides tensors (tests.test_checkpoint_refusals.sprung); the "
                       "loader never unpickles them"}[kind]
    with pytest.raises(InputError) as err:
        load_dit(path, fixture_config(), label="checkpoints.dit")
    check_line(err, "checkpoints.dit", path, problem, DIT_PICKLE_WAY_ON if kind in ("pickled", "trap") else DIT_WAY_ON)


def test_dit_safetensors_that_is_not_one(tmp_path: Path):
    path = random_bytes(tmp_path / "w.safetensors")
    with pytest.raises(InputError) as err:
        load_dit(path, fixture_config(), label="checkpoints.dit")
    check_line(err, "checkpoints.dit", path, "not a safetensors file (no safetensors header)", DIT_WAY_ON)


def test_convert_allow_pickle_turns_a_trusted_file_into_safetensors_the_runner_loads(tmp_path: Path):
    source = pickled(tmp_path / "trained.pt", dit_state())
    config_json = tmp_path / "config.json"
    config_json.write_text(__import__("json").dumps(__import__("json").loads(CASE.with_suffix(".json").read_text())["config"]))
    args = ["--source", str(source), "--model-config", str(config_json)]
    assert convert.main([*args, "--output", str(tmp_path / "refused")]) == 2  # not without the explicit flag
    assert not (tmp_path / "refused").exists()
    assert convert.main([*args, "--output", str(tmp_path / "st"), "--allow-pickle"]) == 0
    reference = load_dit(str(CASE) + ".weights.safetensors", fixture_config())
    converted = load_dit(tmp_path / "st", None)
    for (name, a), (_, b) in zip(reference.state_dict().items(), converted.state_dict().items()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("kind", ["pickled", "random", "truncated"])
def test_tokenizer_statistics_refusals(tmp_path: Path, kind: str):
    path = tmp_path / "mean_std.pt"
    pair = (torch.zeros(16 * 4), torch.ones(16 * 4))
    if kind == "pickled":
        torch.save((pair[0], argparse.Namespace()), path)
    elif kind == "random":
        random_bytes(path)
    else:
        truncated(path, pair)
    problem = {"pickled": PICKLED, "random": NOT_TORCH, "truncated": "truncated (its torch zip archive has no end)"}
    with pytest.raises(InputError) as err:
        load_mean_std(path, 16, 2)
    check_line(err, "checkpoints.tokenizer_dir file", path, problem[kind], OFFICIAL_DOWNLOAD)


@pytest.mark.parametrize("kind", ["random", "torch_save", "truncated"])
def test_tokenizer_torchscript_refusals(tmp_path: Path, kind: str):
    path = tmp_path / "encoder.jit"
    if kind == "random":
        random_bytes(path)
    elif kind == "torch_save":
        torch.save({"w": torch.ones(3)}, path)
    else:
        torch.jit.save(torch.jit.script(torch.nn.Linear(4, 4)), str(path))
        path.write_bytes(path.read_bytes()[:300])
    problem = {"random": "not a TorchScript file", "torch_save": "a torch.save file, not TorchScript (torch.jit.save)",
               "truncated": "truncated (its torch zip archive has no end)"}[kind]
    with pytest.raises(InputError) as err:
        load_torchscript(path)
    check_line(err, "checkpoints.tokenizer_dir file", path, problem, OFFICIAL_DOWNLOAD)


MOGE_WAY_ON = "download `Ruicheng/moge-vitl` model.pt again (README, 'Checkpoints')"


@pytest.mark.parametrize("kind", ["pickled", "random", "truncated", "not_moge"])
def test_moge_refusals(tmp_path: Path, kind: str):
    path = tmp_path / "model.pt"
    if kind == "pickled":
        pickled(path, {"model_config": {}, "model": {}})
    elif kind == "random":
        random_bytes(path)
    elif kind == "truncated":
        truncated(path, {"model_config": {}, "model": {"w": torch.ones(1000)}})
    else:
        torch.save({"model_config": {"encoder": "dinov2_vits14", "no_such_option": 1}, "model": {}}, path)
    problem = {"pickled": PICKLED, "random": NOT_TORCH, "truncated": "truncated (its torch zip archive has no end)",
               "not_moge": None}[kind]
    with pytest.raises(InputError) as err:
        load_moge(str(path))
    if problem is None:
        assert str(err.value).startswith(f"checkpoints.moge {path}: does not fit MoGe v1 (")
        assert str(err.value).endswith(MOGE_WAY_ON) and "\n" not in str(err.value)
    else:
        check_line(err, "checkpoints.moge", path, problem, MOGE_WAY_ON)


@pytest.fixture(scope="module")
def t5_folder(tmp_path_factory) -> Path:
    from tests.test_text import t5_dir as _unused  # noqa: F401  (the tiny T5 recipe lives there)
    import transformers

    from tests.test_text import D_MODEL, _tokenizer

    folder = tmp_path_factory.mktemp("t5ok")
    tokenizer = _tokenizer()
    tokenizer.save_pretrained(folder)
    config = transformers.T5Config(vocab_size=len(tokenizer), d_model=D_MODEL, d_kv=16, d_ff=128, num_layers=1,
                                   num_heads=4, feed_forward_proj="gated-gelu", is_encoder_decoder=False)
    transformers.T5EncoderModel(config).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("kind", ["pickled_bin", "random_bin", "truncated_safetensors", "random_safetensors"])
def test_t5_refusals(tmp_path: Path, t5_folder: Path, kind: str):
    from gen3c_dist.conditioning.text import T5PromptEncoder

    folder = tmp_path / "t5"
    shutil.copytree(t5_folder, folder)
    weights = folder / "model.safetensors"
    if kind.endswith("_bin"):
        weights.unlink()
        weights = folder / "pytorch_model.bin"
        pickled(weights, {}) if kind == "pickled_bin" else random_bytes(weights)
    elif kind == "truncated_safetensors":
        weights.write_bytes(weights.read_bytes()[:-500])
    else:
        random_bytes(weights)
    size = (t5_folder / "model.safetensors").stat().st_size
    problem = {"pickled_bin": PICKLED, "random_bin": NOT_TORCH,
               "truncated_safetensors": f"truncated ({size - 500} bytes, its header promises {size})",
               "random_safetensors": "not a safetensors file (no safetensors header)"}[kind]
    with pytest.raises(InputError) as err:
        T5PromptEncoder(str(folder))
    check_line(err, "checkpoints.t5_dir", folder, f"{weights.name}: {problem}",
               "download `google-t5/t5-11b` again (README, 'Checkpoints')")


@pytest.mark.parametrize("key", ["checkpoints.dit", "checkpoints.moge"])
def test_cli_refuses_a_bad_checkpoint_in_one_line(tmp_path: Path, key: str):
    path = pickled(tmp_path / "model.pt", {"model_config": {}, "model": {}})
    extra = ["input.depth=null"] if key == "checkpoints.moge" else []
    result = run_cli(["--config-name", "demo", *FAST_DEMO, f"output.dir={tmp_path / 'out'}", f"{key}={path}", *extra])
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert errors == [f"[rank 0] ERROR gen3c_dist: {key} {path}: {PICKLED}; "
                      f"{DIT_PICKLE_WAY_ON if key == 'checkpoints.dit' else MOGE_WAY_ON}"], result.stderr[-2000:]
    assert "Traceback" not in result.stderr and "weights_only" not in result.stderr
