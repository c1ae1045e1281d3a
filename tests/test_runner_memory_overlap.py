"""runtime.offload (conditioning models off the GPU between uses) and runtime.overlap (background load/writes).

There is no GPU here, so the offload tests watch where :class:`DeviceSwap` puts things: a spy records every
``.to()`` and the models that are "visiting" the compute device while the DiT denoises. End to end, neither
option may change a single output value.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from gen3c_dist.runner.background import Background, BackgroundWriter
from gen3c_dist.runner.models import DeviceSwap
from gen3c_dist.runner.outputs import Mp4Stream
from gen3c_dist.runner.session import run_session
from gen3c_dist.runner.video import generate_video
from tests.runner_utils import FAST_DEMO, compose


class SpyModule(nn.Linear):
    def __init__(self) -> None:
        super().__init__(2, 2)
        self.moves: list[str] = []

    def to(self, *args, **kwargs):  # type: ignore[override]
        self.moves.append(str(torch.device(args[0])))
        return self


def test_swap_moves_a_module_only_for_its_use_when_offloading():
    swap = DeviceSwap(torch.device("cuda"), offload=True)  # no CUDA needed: the spy never really moves
    spy = SpyModule()
    assert swap.home == torch.device("cpu") and swap.offload
    with swap.use("moge", spy):
        assert swap.resident == {"moge"}
    assert spy.moves == ["cuda", "cpu"] and swap.resident == set()
    with pytest.raises(RuntimeError):
        with swap.use("moge", spy):
            raise RuntimeError("a failing depth call")
    assert spy.moves[-1] == "cpu" and swap.resident == set()  # back home even when the use fails


def test_swap_without_offload_never_moves():
    spy = SpyModule()
    with DeviceSwap(torch.device("cuda"), offload=False).use("moge", spy):
        pass
    assert spy.moves == []


class SpyStat:
    """Stands in for the latent mean/std tensors: remembers the device it was last sent to."""

    def __init__(self) -> None:
        self.device = "cpu"

    def to(self, device):
        self.device = str(torch.device(device))
        return self


def test_swap_places_the_tokenizer_part_and_its_device():
    from types import SimpleNamespace

    tokenizer = SimpleNamespace(encoder=SpyModule(), decoder=SpyModule(), latent_mean=SpyStat(), latent_std=SpyStat(),
                                device=torch.device("cpu"))
    swap = DeviceSwap(torch.device("cuda"), offload=True)
    with swap.use_tokenizer(tokenizer, "decoder") as tok:
        assert tok.device == torch.device("cuda") and tok.latent_mean.device == "cuda" == tok.latent_std.device
        assert swap.resident == {"tokenizer.decoder"}
    assert tokenizer.decoder.moves == ["cuda", "cpu"] and tokenizer.encoder.moves == []  # only the part in use
    assert tokenizer.device == torch.device("cpu") and tokenizer.latent_mean.device == "cpu"
    assert swap.resident == set()
    with pytest.raises(ValueError, match="'encoder' or 'decoder'"):
        with swap.use_tokenizer(tokenizer, "both"):
            pass


def fast_demo(out: Path, *extra: str):
    return compose("demo", [*FAST_DEMO, f"output.dir={out}", "output.save_latents=true", "input.num_frames=241", *extra])


def test_offload_and_overlap_change_no_output_and_nothing_visits_the_gpu_while_denoising(tmp_path: Path, monkeypatch):
    reference = tmp_path / "reference"
    assert run_session(fast_demo(reference, "runtime.overlap=false")) == 0

    swaps: list[DeviceSwap] = []
    original_init = DeviceSwap.__init__

    def recording_init(self, compute, *, offload):
        original_init(self, compute, offload=offload)
        swaps.append(self)

    resident_during_steps: list[set[str]] = []
    original_generate = generate_video

    def watching_generate(*args, on_step=None, **kwargs):
        def observe(chunk, step):
            resident_during_steps.append(set().union(*(s.resident for s in swaps)))
            if on_step is not None:
                on_step(chunk, step)
        return original_generate(*args, on_step=observe, **kwargs)

    monkeypatch.setattr(DeviceSwap, "__init__", recording_init)
    monkeypatch.setattr("gen3c_dist.runner.video.generate_video", watching_generate)
    candidate = tmp_path / "offload_overlap"
    assert run_session(fast_demo(candidate, "runtime.offload=true", "runtime.overlap=true")) == 0

    assert len(swaps) == 1 and swaps[0].home == torch.device("cpu")
    # Each chunk encodes then decodes (the demo's depth comes from its file and the cache render: no MoGe).
    assert swaps[0].visits == ["tokenizer.encoder", "tokenizer.decoder"] * 2
    assert len(resident_during_steps) == 2 * 3 and all(r == set() for r in resident_during_steps)
    a, b = load_file(str(reference / "demo_latents.safetensors")), load_file(str(candidate / "demo_latents.safetensors"))
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert (iio.imread(reference / "demo.mp4") == iio.imread(candidate / "demo.mp4")).all()
    assert (iio.imread(reference / "demo_cache.mp4") == iio.imread(candidate / "demo_cache.mp4")).all()


def test_background_writer_keeps_order_and_raises_a_failed_write():
    writer = BackgroundWriter(enabled=True)
    order: list[int] = []
    for i in range(5):
        writer.submit(lambda i=i: (time.sleep(0.01 * (5 - i)), order.append(i)))
    writer.drain()
    assert order == [0, 1, 2, 3, 4] and writer.busy_s > 0

    def fail():
        raise OSError("disk full")

    writer.submit(fail)
    writer.submit(lambda: order.append(99))  # later writes still run...
    with pytest.raises(OSError, match="disk full"):  # ...and the failure reaches the main thread
        writer.drain()
    assert order[-1] == 99
    writer.close()


def test_background_value_runs_in_a_thread_and_reraises():
    started = threading.Event()
    value = Background(lambda: (started.set(), torch.is_inference_mode_enabled())[1], enabled=True)
    assert value.result() is True and started.is_set()  # the loader thread runs under inference_mode too
    failing = Background(lambda: 1 / 0, enabled=True)
    with pytest.raises(ZeroDivisionError):
        failing.result()


def test_mp4_stream_appears_only_when_finished_and_abort_leaves_nothing(tmp_path: Path):
    frames = np.random.default_rng(0).integers(0, 255, (6, 32, 48, 3), dtype=np.uint8)
    stream = Mp4Stream(tmp_path / "v.mp4", fps=24)
    stream.append(frames[:3])
    stream.append(frames[3:])
    assert not (tmp_path / "v.mp4").exists()
    stream.finish()
    assert iio.imread(tmp_path / "v.mp4").shape == (6, 32, 48, 3)
    aborted = Mp4Stream(tmp_path / "w.mp4", fps=24)
    aborted.append(frames)
    aborted.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.mp4"]
    with pytest.raises(ValueError, match="uint8"):
        Mp4Stream(tmp_path / "x.mp4", fps=24).append(frames.astype(np.float32))


def test_overlap_defaults_to_cuda_only():
    from gen3c_dist.config import ParallelConfig
    from gen3c_dist.parallel.distributed import DistEnv
    from gen3c_dist.parallel.layout import plan_layout
    from gen3c_dist.runner.replica import resolve_settings

    layout = plan_layout(ParallelConfig(), world_size=1, rank=0, num_heads=4, guidance_runs_both=True)

    def settings(cfg, device: str):
        return resolve_settings(cfg, DistEnv(0, 1, 0, None, torch.device(device), 1.0, 1.0), layout)

    cfg = compose("demo", [])
    assert cfg.runtime.overlap is None
    assert settings(cfg, "cuda").overlap is True and settings(cfg, "cuda").dtype == torch.bfloat16
    assert settings(cfg, "cpu").overlap is False and settings(cfg, "cpu").dtype == torch.float32
    forced = compose("demo", ["runtime.overlap=true", "runtime.dtype=bf16"])
    assert settings(forced, "cpu").overlap is True and settings(forced, "cpu").dtype == torch.bfloat16
    assert settings(cfg, "cpu").tokenizer_shared is False  # one process: nobody to share the tokenizer with
