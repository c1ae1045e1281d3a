"""Video and multi-view inputs for the runner tests at FAST_DEMO's size, and what the runner tests share.

The video is the demo video (:mod:`gen3c_dist.demo_video`) and the key frames the demo's four views
(:mod:`gen3c_dist.demo_multiview`), both rendered at 64 x 96 (the shipped assets are 128 x 192, and these two
formats are not resized), 241 frames long so that one source serves 121- and 241-frame runs.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from gen3c_dist.conditioning.video_conditioner import VideoConditioner
from gen3c_dist.demo_multiview import multiview_scene
from tests.runner_utils import FAST_DEMO, run_cli
from tests.video_utils import small_video, write_directory

HEIGHT, WIDTH = 64, 96  # FAST_DEMO's input.height / input.width
LONG = 241


def write_video_source(folder: Path, num_frames: int = LONG, **replace: dict) -> Path:
    """The demo video at 64 x 96 in the official directory layout; ``replace`` swaps a file's arrays."""
    return write_directory(folder, small_video(num_frames, HEIGHT, WIDTH), **replace)


def multiview_arrays(num_frames: int = LONG, views: Optional[list[int]] = None) -> dict[str, np.ndarray]:
    """The demo's key views (all four, or those in ``views``) and a ``num_frames`` arc, at 64 x 96."""
    arrays = multiview_scene(num_frames, HEIGHT, WIDTH)
    if views is not None:
        arrays = {k: v if k == "w2cs_all" else v[views] for k, v in arrays.items()}
    return arrays


def write_multiview_npz(path: Path, arrays: Optional[dict[str, np.ndarray]] = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **(multiview_arrays() if arrays is None else arrays))
    return path


def write_key_frame_folder(folder: Path, arrays: dict[str, np.ndarray]) -> Path:
    """The key frames of ``arrays`` as a folder: PNG images, .npy depth, cameras.json with w2c and K matrices."""
    from PIL import Image

    (folder / "images").mkdir(parents=True)
    frames = []
    for i, image_3HW in enumerate(arrays["images_key_frames"]):
        rgb_HW3 = np.round((image_3HW.transpose(1, 2, 0) + 1) * 127.5).astype(np.uint8)  # exact: u8 / 127.5 - 1
        Image.fromarray(rgb_HW3).save(folder / "images" / f"{i:03d}.png")
        np.save(folder / f"depth{i:03d}.npy", arrays["depth_key_frames"][i, 0])
        frames.append({"image": f"images/{i:03d}.png", "depth": f"depth{i:03d}.npy",
                       "w2c": arrays["w2cs_key_frames"][i].tolist(), "K": arrays["K_key_frames"][i].tolist()})
    (folder / "cameras.json").write_text(json.dumps({"frames": frames}))
    return folder


def video_args(source: Path) -> list[str]:
    return ["--config-name", "demo_video", *FAST_DEMO, f"input.video={source}"]


def multiview_args(npz: Path) -> list[str]:
    return ["--config-name", "demo_multiview", *FAST_DEMO, f"input.key_frames={npz}"]


def cli_latents(args: list[str], out: Path, *, name: str, nproc: int = 1) -> dict[str, torch.Tensor]:
    """Latents of one CLI run (single process, or ``nproc`` ranks under torchrun)."""
    result = run_cli([*args, "output.save_latents=true", f"output.dir={out}"], nproc=nproc)
    assert result.returncode == 0, result.stderr[-3000:]
    return load_file(str(out / f"{name}_latents.safetensors"))


def max_relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / a.abs().max()).item()


def assert_latents_match(single: dict[str, torch.Tensor], multi: dict[str, torch.Tensor], label: str) -> None:
    """Chunk 0 within 1e-5 relative. Later chunks are conditioned on the previous chunk's last decoded uint8
    frame: an fp32 rounding difference (ring attention, the sequence-parallel decode) can flip a rare value by
    one level there, so they get the image-mode tests' bound of 1e-2 (tests/test_runner.py)."""
    assert set(multi) == set(single)
    for chunk in sorted(single, key=lambda name: int(name[len("chunk"):])):
        difference = max_relative_difference(single[chunk], multi[chunk])
        print(f"{label} {chunk}: max relative latent difference {difference:.3e}")
        assert difference < (1e-5 if chunk == "chunk0" else 1e-2), (label, chunk, difference)


@dataclasses.dataclass
class SpiedChunk:
    """What the conditioner handed to the tokenizer for one chunk (on the lead)."""

    warps: torch.Tensor
    masks: torch.Tensor
    condition_video: torch.Tensor


def spy_on_chunks(monkeypatch: pytest.MonkeyPatch) -> dict[int, SpiedChunk]:
    """Record every chunk's renders and condition video, by chunk index, while the runner runs in this process."""
    seen: dict[int, SpiedChunk] = {}
    original = VideoConditioner.tokenizer_inputs

    def spy(self, chunk_index, warps, masks, last_frame_HW3):
        inputs = original(self, chunk_index, warps, masks, last_frame_HW3)
        seen[chunk_index] = SpiedChunk(warps.clone(), masks.clone(), inputs.videos[0].clone())
        return inputs

    monkeypatch.setattr(VideoConditioner, "tokenizer_inputs", spy)
    return seen


def assert_one_line_refusal(result, message: str, *, ranks: int = 1) -> None:
    """Exit 2 on every rank, one error line per rank with the message, no traceback from the runner, and nothing
    after validation (no layout line, no random-weights warning: no model was loaded).

    Under torchrun the launcher itself exits 1 and prints its own summary (with its own traceback), naming each
    rank's exit code."""
    if ranks == 1:
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    else:
        assert result.returncode != 0 and result.stderr.count("exitcode  : 2") >= 1, result.stderr[-3000:]
        assert "gen3c_dist/" not in "".join(line for line in result.stderr.splitlines() if line.startswith("  File"))
    assert "layout: world" not in result.stderr and "RANDOM weights" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == ranks and all(message in line for line in errors), result.stderr[-3000:]
    assert sorted(int(line.split("]")[0].split()[-1]) for line in errors) == list(range(ranks))
