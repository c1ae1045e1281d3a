"""Step 5 of ``benchmarks/gpu_check.py``: one real chunk through ``python -m gen3c_dist.run``, timed by the runner.

The runner runs as a subprocess with its public command line, so the figures are the whole pipeline's as a user
gets it (random weights, text disabled, the shipped demo scene's depth, ``cache_render`` depth for the generated
frames, official guidance: two forwards per step), and the stage times come from the runner's own JSON record.
Every setting the check depends on is passed explicitly over ``conf/demo.yaml``, so a change to the demo preset
does not change the check.

When the full chunk does not fit the step's budget (predicted from the forward and tokenizer times measured in
steps 2 and 4), fewer denoising steps run and the report says so (``full_chunk: false``); the per-step time
still comes from the record, and ``denoise_s_at_requested_steps`` scales its median to the requested steps.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import torch

from gen3c_dist.config import model_preset
from gen3c_dist.model.dit import GEN3CDiT, count_parameters
from gen3c_dist.perf.flops import dit_forward_flops

from gpu_check_budget import BudgetSpent, StepClock  # benchmarks/, beside this file
from gpu_check_context import CheckContext
from gpu_check_measure import cpu_randn_seconds_per_value
from gpu_check_model_steps import first_forward_guess

REPO_ROOT = Path(__file__).resolve().parents[1]
ASSETS = REPO_ROOT / "gen3c_dist" / "assets"
RECORD_NAME = "gpu_check"
RECORD_FIELDS = ("stages_s", "steps_s", "load_s", "wall_s", "frames", "tokens", "device", "dtype", "versions")
# Process start, imports, CUDA context, tokenizer init, cache render and the mp4 write: a guess until a device run.
RUNNER_OVERHEAD_S = 30.0
ENCODES_FIRST_CHUNK = 3  # 1 + 2 x buffers with one buffer (README, "Where the cache render and the tokenizer run")
MIN_RUNNER_STEPS = 2  # fewer would leave no step after the first (which carries the kernels' first-call costs)
KILL_GRACE_S = 10.0  # what the step keeps back to stop the runner and read its log


@dataclasses.dataclass(frozen=True)
class RunnerPlan:
    steps: int  # 0: not even MIN_RUNNER_STEPS fit
    predicted_s: Optional[float]
    reason: str


def plan_runner_steps(*, requested: int, remaining_s: float, forward_s: Optional[float], init_s: float,
                      conditioning_s: float, decode_s: float, overhead_s: float = RUNNER_OVERHEAD_S,
                      min_steps: int = MIN_RUNNER_STEPS) -> RunnerPlan:
    """How many denoising steps fit in ``remaining_s``. The DiT loads beside the lead's conditioning
    (``runtime.overlap`` is on with CUDA), so the fixed part is overhead + max(init, conditioning) + decode; each
    step is two forwards."""
    if forward_s is None:
        return RunnerPlan(requested, None, "no forward was timed: the full chunk runs and the budget guards it")
    fixed = overhead_s + max(init_s, conditioning_s) + decode_s
    full = fixed + requested * 2 * forward_s
    if full <= remaining_s:
        return RunnerPlan(requested, full, f"the full {requested}-step chunk is predicted at {full:.0f} s")
    steps = min(requested, int((remaining_s - fixed) // (2 * forward_s)))
    if steps < min_steps:
        return RunnerPlan(0, fixed + min_steps * 2 * forward_s,
                          f"even {min_steps} steps are predicted at {fixed + min_steps * 2 * forward_s:.0f} s, "
                          f"over the {remaining_s:.0f} s left")
    return RunnerPlan(steps, fixed + steps * 2 * forward_s,
                      f"the full {requested}-step chunk is predicted at {full:.0f} s, over the {remaining_s:.0f} s "
                      f"left: {steps} steps run")


def runner_overrides(ctx: CheckContext, *, steps: int, output_dir: Path) -> list[str]:
    frames, height, width = ctx.shapes.video_thw
    return [
        f"model={ctx.shapes.model_preset}", f"tokenizer.preset={ctx.shapes.tokenizer_preset}",
        "checkpoints.random_weights=true", "checkpoints.dit=null", "checkpoints.tokenizer_dir=null",
        "checkpoints.t5_dir=null", "checkpoints.moge=null",
        f"input.image='{ASSETS / 'demo_scene.png'}'", f"input.depth='{ASSETS / 'demo_scene_depth.npz'}'",
        f"input.num_frames={frames}", f"input.height={height}", f"input.width={width}",
        "text.enabled=false", "cache.generated_frame_depth=cache_render",
        f"sampler.steps={steps}", "sampler.guidance=1.0", "sampler.guidance_policy=official",
        # auto: CUDA where the check runs on CUDA; the CPU smoke run must stay on the CPU even beside a GPU.
        f"runtime.device={'auto' if ctx.device.type == 'cuda' else 'cpu'}", "runtime.progress=false",
        f"output.dir='{output_dir}'", f"output.name={RECORD_NAME}", "output.save_buffer=false", "output.resume=false",
    ]


def _stop(process: subprocess.Popen) -> None:
    """End the runner and whatever it started: its own process group (``start_new_session``)."""
    for sig, wait_s in ((signal.SIGTERM, KILL_GRACE_S / 2), (signal.SIGKILL, KILL_GRACE_S / 2)):
        if process.poll() is not None:
            return
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            continue


def run_logged(command: list[str], log_path: Path, *, timeout_s: float) -> tuple[Optional[int], float]:
    """Exit status (None when stopped at ``timeout_s``) and wall seconds; stdout and stderr go to ``log_path``."""
    start = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log:
        process = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                   env=dict(os.environ, PYTHONUNBUFFERED="1"), start_new_session=True)
        try:
            return process.wait(timeout=max(timeout_s, 1.0)), time.perf_counter() - start
        except subprocess.TimeoutExpired:
            return None, time.perf_counter() - start
        finally:
            _stop(process)  # also when the step's alarm interrupts the wait


def log_tail(path: Path, lines: int = 20) -> str:
    return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]) if path.exists() else ""


def _plan(ctx: CheckContext, clock: StepClock) -> tuple[RunnerPlan, float]:
    cfg = model_preset(ctx.shapes.model_preset)
    with torch.device("meta"):
        parameters = count_parameters(GEN3CDiT(cfg))
    # The runner's random_dit draws every weight from a CPU generator (gen3c_dist/model/weights.py).
    init_s = parameters * cpu_randn_seconds_per_value()
    forward_s = ctx.eager_best_s.get(ctx.auto_kernel) if ctx.auto_kernel else None
    if forward_s is None and ctx.matmul_flops_per_s:
        forward_s = first_forward_guess(
            ctx, dit_forward_flops(cfg, ctx.shapes.latent_thw, text_tokens=ctx.shapes.text_tokens).total)
    plan = plan_runner_steps(
        requested=ctx.shapes.chunk_steps, remaining_s=clock.remaining() - KILL_GRACE_S, forward_s=forward_s,
        init_s=init_s, conditioning_s=ENCODES_FIRST_CHUNK * ctx.tokenizer_best_s.get("encode", 0.0),
        decode_s=ctx.tokenizer_best_s.get("decode", 0.0),
    )
    return plan, init_s


def step_runner_chunk(ctx: CheckContext, clock: StepClock, result: dict) -> None:
    plan, init_s = _plan(ctx, clock)
    requested = ctx.shapes.chunk_steps
    result.update(steps_requested=requested, steps_run=plan.steps, full_chunk=plan.steps == requested,
                  predicted_s=plan.predicted_s, plan=plan.reason, estimated_dit_init_s=init_s, command=None,
                  returncode=None, wall_s=None, record=None, step_s_median=None, denoise_s_at_requested_steps=None,
                  log_tail=None)
    if plan.steps == 0:
        clock.skip(f"runner chunk not started: {plan.reason}")
        return
    output_dir = ctx.work_dir / "runner"
    shutil.rmtree(output_dir, ignore_errors=True)
    command = [sys.executable, "-m", "gen3c_dist.run", "--config-name", "demo",
               *runner_overrides(ctx, steps=plan.steps, output_dir=output_dir)]
    result["command"] = shlex.join(command)
    log_path = ctx.out_dir / "runner_log.txt"
    returncode, result["wall_s"] = run_logged(command, log_path, timeout_s=clock.remaining() - KILL_GRACE_S)
    result["returncode"], result["log_tail"] = returncode, log_tail(log_path)
    if returncode is None:
        raise BudgetSpent(f"the runner was stopped after {result['wall_s']:.0f} s, at the step's budget")
    if returncode != 0:
        raise RuntimeError(f"the runner exited with status {returncode}; see runner_log.txt")
    record_path = output_dir / f"{RECORD_NAME}.json"
    record = json.loads(record_path.read_text(encoding="utf-8"))
    shutil.copyfile(record_path, ctx.out_dir / "runner_record.json")
    result["record"] = {name: record[name] for name in RECORD_FIELDS}
    result["step_s_median"] = statistics.median(record["steps_s"])
    result["denoise_s_at_requested_steps"] = result["step_s_median"] * requested
