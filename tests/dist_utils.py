"""Run a function on N local gloo processes and collect what each rank returned or raised (tests only).

Processes come from a ``forkserver`` whose server preloads torch and the calling test module once, so a start
costs ~0.1 s instead of ~3 s of fresh interpreter + torch import per rank. Forking from the server (which never
ran an OpenMP region) is safe where forking the pytest process would not be. Each rank uses one thread, so four
ranks on two CI cores do not oversubscribe. Results travel back through ``torch.save`` bytes, not shared memory.
"""

from __future__ import annotations

import dataclasses
import io
import multiprocessing
import os
import queue
import socket
import time
import traceback
from typing import TYPE_CHECKING, Any, Callable

import torch
import torch.distributed as dist

from gen3c_dist.config import DistributedConfig

from gen3c_dist.parallel.distributed import EXIT_KEY, DistEnv, arrive_and_wait, init_distributed, shutdown_distributed

if TYPE_CHECKING:
    from gen3c_dist.config import ModelConfig

RankFn = Callable[..., Any]  # fn(env: DistEnv, *args) -> picklable result (tensors allowed)


@dataclasses.dataclass
class RankResult:
    rank: int
    value: Any = None
    error_type: str | None = None
    error: str | None = None
    traceback: str | None = None
    started_at: float = 0.0  # time.time() when fn started
    finished_at: float = 0.0  # time.time() when fn returned or raised
    exitcode: int | None = None

    def unwrap(self) -> Any:
        if self.error_type is not None:
            raise AssertionError(f"rank {self.rank} raised {self.error_type}: {self.error}\n{self.traceback}")
        return self.value


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _to_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


_SINK: tuple[Any, RankResult] | None = None  # this process's result queue and result, for report_abandoned


def report_abandoned(line: str) -> None:
    """``fault_guard(before_exit=...)`` hook: the watchdog is about to end this process; send its line as the
    result (error_type ``"Abandoned"``), since the main thread, blocked in a collective, never will."""
    if _SINK is None:
        return
    out, result = _SINK
    result.error_type, result.error, result.finished_at = "Abandoned", line, time.time()
    out.put(_to_bytes(result))
    out.close()
    out.join_thread()


def _worker(fn: RankFn, rank: int, world_size: int, port: int, args: tuple, config: DistributedConfig, out: Any,
            join_wait_s: float) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank)
    )
    torch.set_num_threads(1)
    result = RankResult(rank=rank)
    global _SINK
    _SINK = (out, result)
    env: DistEnv | None = None
    try:
        env = init_distributed(config)
        result.started_at = time.time()
        result.value = fn(env, *args)
    except BaseException as exc:  # report everything, including SystemExit from the code under test
        result.error_type, result.error = type(exc).__name__, str(exc)
        result.traceback = traceback.format_exc()
    result.finished_at = time.time()
    out.put(_to_bytes(result))
    out.close()
    out.join_thread()  # flush the queue's feeder thread: os._exit below would drop unsent data
    if env is not None and result.error_type is None:
        # Waits for every rank first: rank 0 hosts the store, and peers may still be using it (a subgroup that
        # rank 0 is not in still rendezvous through it), so it must not leave before they are done.
        shutdown_distributed(env, wait_s=join_wait_s)
    elif env is not None and env.distributed and dist.is_initialized():
        # A rank that raised leaves its (possibly broken) process group to process exit, as a real job does,
        # but counts itself out first so the others' exit wait does not run to its bound (the fault guard has
        # already torn the group down on a rank that failed inside it: then there is no store to tell).
        arrive_and_wait(dist.distributed_c10d._get_default_store(), EXIT_KEY, env.world_size, wait_s=0)
    os._exit(0 if result.error_type is None else 1)


def run_distributed(
    fn: RankFn,
    world_size: int,
    *,
    args: tuple = (),
    timeout_s: float = 30.0,
    fault_grace_s: float = 2.0,
    join_timeout_s: float = 120.0,
) -> list[RankResult]:
    """Run ``fn(env, *args)`` on ``world_size`` gloo ranks; results in rank order (exceptions captured)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["torch", "gen3c_dist.parallel", fn.__module__])
    config = DistributedConfig(backend="gloo", timeout_s=timeout_s, fault_grace_s=fault_grace_s)
    out = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(fn, r, world_size, port, args, config, out, join_timeout_s))
             for r in range(world_size)]
    for proc in procs:
        proc.start()
    results: dict[int, RankResult] = {}
    deadline = time.monotonic() + join_timeout_s
    # Stop collecting at the deadline, or once every process has exited (one that crashed sends nothing).
    while len(results) < world_size and time.monotonic() < deadline:
        try:
            item: RankResult = torch.load(io.BytesIO(out.get(timeout=0.2)), weights_only=False)
            results[item.rank] = item
        except queue.Empty:
            if not any(proc.is_alive() for proc in procs):
                break
    for rank, proc in enumerate(procs):
        proc.join(timeout=max(0.1, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()  # only the processes this helper started
            proc.join()
        results.setdefault(rank, RankResult(rank=rank, error_type="NoResult", error="crashed, or no result in time"))
        results[rank].exitcode = proc.exitcode
    return [results[r] for r in range(world_size)]


# ---- tiny DiT cases shared by the parallel tests ------------------------------------------------------------
# Latent (T, H, W) = (5, 10, 14) patchifies to 5 x 5 x 7 = 175 tokens: no CP degree 2, 3 or 4 divides it.
TINY_LATENT_THW = (5, 10, 14)


def tiny_model_config(num_heads: int) -> "ModelConfig":
    """The tiny preset with ``num_heads`` heads of 32 channels (3 heads: a Ulysses degree of 2 does not divide)."""
    from gen3c_dist.config import model_preset

    return dataclasses.replace(model_preset("tiny"), model_channels=32 * num_heads, num_heads=num_heads)


def tiny_inputs(model_cfg: "ModelConfig", *, seed: int = 1) -> dict[str, Any]:
    """x, timestep and the cond / uncond forward kwargs (uncond: other text, zeroed warp latents, as GEN3C)."""
    from gen3c_dist.config import LATENT_CHANNELS

    g = torch.Generator().manual_seed(seed)
    T, H, W = TINY_LATENT_THW
    pose = torch.randn(1, 2 * LATENT_CHANNELS * model_cfg.frame_buffer_max, T, H, W, generator=g)
    mask = torch.zeros(1, 1, T, H, W)
    mask[:, :, 0] = 1
    shared = {"condition_video_input_mask_B1THW": mask, "padding_mask_B1HW": torch.zeros(1, 1, H, W), "fps": 24.0}
    text = torch.randn(2, 1, 8, model_cfg.crossattn_emb_channels, generator=g)
    return {
        "x": torch.randn(1, LATENT_CHANNELS, T, H, W, generator=g),
        "timestep": torch.tensor([0.3]),
        "cond": {"crossattn_emb_BLcCt": text[0], "condition_video_pose_BCTHW": pose, **shared},
        "uncond": {"crossattn_emb_BLcCt": text[1], "condition_video_pose_BCTHW": torch.zeros_like(pose), **shared},
    }


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).abs().max() / expected.abs().max())
