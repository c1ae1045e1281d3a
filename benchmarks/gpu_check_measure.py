"""Measuring tools for ``benchmarks/gpu_check.py``: timers, peak memory, the matmul ceiling, device facts, and
the 7B-shape DiT with random weights drawn on the device.

Timing follows ``../.library``'s method for a lent GPU: warm up first, time with CUDA events around the region
(a host clock after a synchronise on the CPU), take the median of repeats, never time on zeros.
"""

from __future__ import annotations

import platform
import resource
import statistics
import subprocess
import time
from typing import Any, Callable, Optional, TypeVar

import torch

from gen3c_dist.config import LATENT_CHANNELS, ModelConfig
from gen3c_dist.model.dit import GEN3CDiT
from gen3c_dist.perf.hardware import host_info

GIB = 2**30
T = TypeVar("T")


class DeviceTimer:
    """Seconds of one call: CUDA events on a GPU (the device's own clock), a host clock elsewhere."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def time(self, fn: Callable[[], T]) -> tuple[T, float]:
        self.sync()  # work queued before the region is not the region's
        if not self.cuda:
            start = time.perf_counter()
            out = fn()
            return out, time.perf_counter() - start
        start_event = torch.cuda.Event(enable_timing=True)
        end_event = torch.cuda.Event(enable_timing=True)
        start_event.record()
        out = fn()
        end_event.record()
        end_event.synchronize()
        return out, start_event.elapsed_time(end_event) / 1e3

    def wall(self, fn: Callable[[], T]) -> tuple[T, float]:
        """Host seconds from a synchronised start to a synchronised end: for calls whose host work (a compile,
        a CPU-side init) is part of what is measured."""
        self.sync()
        start = time.perf_counter()
        out = fn()
        self.sync()
        return out, time.perf_counter() - start


class MemoryProbe:
    """Peak memory of a region. On a GPU, torch's peak allocation since :meth:`reset`; on the CPU the process's
    peak resident set (it never resets, so it bounds the region from above): ``kind`` names which one."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.kind = "cuda_max_allocated" if device.type == "cuda" else "host_max_rss"

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_gib(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / GIB
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB  # Linux reports KiB


def free_memory_bytes(device: torch.device) -> int:
    """Memory a new allocation can take: the GPU's free memory, or the host's MemAvailable."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    with open("/proc/meminfo", encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("/proc/meminfo has no MemAvailable line")


def release_memory(device: torch.device) -> None:
    """Hand cached blocks back, so the next step (or the runner's own process) finds the memory free."""
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def best(times_s: list[float]) -> Optional[float]:
    return min(times_s) if times_s else None


def rate_tflops(flops: int, seconds: Optional[float]) -> Optional[float]:
    return None if not seconds else flops / seconds / 1e12


def matmul_rate(device: torch.device, *, n: int, dtype: torch.dtype, warmup: int, repeats: int, seed: int) -> dict:
    """Median rate of an ``n x n x n`` product on random data: the ceiling MFU is measured against."""
    generator = torch.Generator(device=device).manual_seed(seed)
    a = torch.randn(n, n, device=device, dtype=dtype, generator=generator)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=generator)
    timer = DeviceTimer(device)
    for _ in range(warmup):
        torch.matmul(a, b)
    times = [timer.time(lambda: torch.matmul(a, b))[1] for _ in range(repeats)]
    median = statistics.median(times)
    return {"n": n, "dtype": str(dtype).removeprefix("torch."), "warmup": warmup, "repeats": repeats,
            "times_s": [round(t, 6) for t in times], "median_s": median, "tflops": 2 * n**3 / median / 1e12}


def _driver_version() -> Optional[str]:
    try:
        found = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    lines = found.stdout.split()
    return lines[0] if found.returncode == 0 and lines else None


def device_facts(device: torch.device) -> dict:
    """What the numbers were measured on. GPU-only facts are None on the CPU."""
    host = host_info()
    facts: dict[str, Any] = {
        "device_type": device.type, "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "python": platform.python_version(), "cpu_model": host["cpu_model"], "cpu_cores": host["cpu_cores_usable"],
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        facts.update(name=props.name, total_memory_gib=props.total_memory / GIB,
                     capability=f"{props.major}.{props.minor}", multiprocessors=props.multi_processor_count,
                     driver=_driver_version())
    else:
        facts.update(name=host["cpu_model"], total_memory_gib=(host["memory_bytes"] or 0) / GIB,
                     capability=None, multiprocessors=None, driver=None)
    return facts


# ---- the DiT ----------------------------------------------------------------------------------------------
def random_dit_on_device(cfg: ModelConfig, *, seed: int, device: torch.device, dtype: torch.dtype) -> GEN3CDiT:
    """A DiT with the distributions of :func:`gen3c_dist.model.weights.random_dit`, drawn on ``device``.

    ``random_dit`` draws every value from a CPU generator (the same model on any device), which takes about
    90 s for the 7B shape; here the device's generator fills each tensor in place, in ``dtype``, allocated
    directly in that dtype (the meta model is cast before it is materialised). Same distributions, other values:
    only speed and memory are measured with it. Linear weights N(0, 1/fan_in), position tables N(0, 1), norm
    weights 1.
    """
    with torch.device("meta"):
        model = GEN3CDiT(cfg).to(dtype=dtype)
    model = model.to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "pos_emb" in name:
                param.normal_(generator=generator)
            elif param.ndim == 2:
                param.normal_(std=param.shape[1] ** -0.5, generator=generator)
            else:
                param.fill_(1.0)
    return model.eval().requires_grad_(False)


def weights_gib(module: torch.nn.Module) -> float:
    return sum(p.numel() * p.element_size() for p in module.parameters()) / GIB


def dit_inputs(cfg: ModelConfig, latent_THW: tuple[int, int, int], *, text_tokens: int, device: torch.device,
               dtype: torch.dtype, seed: int) -> tuple[tuple, dict]:
    """Random inputs of one forward (batch 1), as the sampler passes them: positional args and keywords."""
    T_, H, W = latent_THW
    generator = torch.Generator(device=device).manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(shape, device=device, dtype=dtype, generator=generator)

    x_BCTHW = randn(1, LATENT_CHANNELS, T_, H, W)
    timesteps_B = torch.full((1,), 0.25, device=device, dtype=dtype)  # a mid-schedule c_noise
    crossattn_BLcCt = randn(1, text_tokens, cfg.crossattn_emb_channels)
    mask_B1THW = (torch.rand((1, 1, T_, H, W), device=device, generator=generator) < 0.5).to(dtype)
    pose_BCTHW = randn(1, 2 * LATENT_CHANNELS * cfg.frame_buffer_max, T_, H, W)
    padding_B1HW = torch.zeros((1, 1, H, W), device=device, dtype=dtype)  # no padding, as at 704x1280
    kwargs = dict(condition_video_input_mask_B1THW=mask_B1THW, condition_video_pose_BCTHW=pose_BCTHW,
                  padding_mask_B1HW=padding_B1HW, fps=24.0)
    return (x_BCTHW, timesteps_B, crossattn_BLcCt), kwargs


def cpu_randn_seconds_per_value(samples: int = 2**22) -> float:
    """Seconds per value of a seeded CPU ``randn``: what ``random_dit`` in the runner spends per weight."""
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    torch.randn(samples, generator=generator)
    return (time.perf_counter() - start) / samples
