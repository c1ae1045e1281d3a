"""One prepared GPU check: GEN3C-7B's real shapes on one H100/H200, inside a fixed time budget.

    python benchmarks/gpu_check.py --out results/h200             # on the GPU machine (benchmarks/README.md)
    python benchmarks/gpu_check.py --smoke --out /tmp/gpu_smoke    # the same code path at tiny shapes, CPU

Steps, in this order, each with its own budget (capped by what is left of ``--budget-s``):

1. ``device``: GPU name, memory, torch / CUDA / cuDNN versions, and the measured bf16 8192^3 matmul rate, the
   ceiling MFU is measured against.
2. ``dit_forward``: the 7B-shape DiT with seeded random weights drawn on the GPU in bf16; one forward at the
   full 121x704x1280 latent (16x88x160, 56,320 tokens) for every attention kernel ``runtime.attention_kernel``
   can pick there, with MFU from the exact FLOP count of ``gen3c_dist/perf/flops.py`` and peak memory.
3. ``dit_compile``: the same model with ``runtime.compile=true``: first call (compile + forward) and forward.
4. ``tokenizer``: the full-size CV8x8x8 tokenizer: encode and decode of 121x704x1280, time and peak memory.
5. ``runner_chunk``: if time is left, one real 35-step chunk through ``python -m gen3c_dist.run`` (random
   weights, text disabled, the shipped scene's depth); its stage times come from the runner's JSON record.

``gpu_check.json`` and ``gpu_check.md`` are rewritten in ``--out`` after every step, so a run stopped from outside
keeps its finished steps; the runner's record and log land there too (at most 4 files). Exit status: 0 when no
step failed and every field of the finished steps is sane (``--smoke``: every step done, every field present and
sane), 1 otherwise, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

# The tree runs uninstalled on the GPU machine, and a development venv may hold an editable install of another
# checkout: the repository root goes first on the path, so gen3c_dist is always this checkout's.
REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from gpu_check_budget import SKIPPED, Budget, StepClock, StepRecord  # noqa: E402  benchmarks/, beside this file
from gpu_check_context import FULL, SMOKE, CheckContext, CheckShapes  # noqa: E402
from gpu_check_measure import MemoryProbe, release_memory  # noqa: E402
from gpu_check_model_steps import step_device, step_dit_compile, step_dit_forward, step_tokenizer  # noqa: E402
from gpu_check_report import SCHEMA, STEP_NAMES, problems, to_markdown, write_report  # noqa: E402
from gpu_check_runner import step_runner_chunk  # noqa: E402

StepFn = Callable[[CheckContext, StepClock, dict], None]


@dataclasses.dataclass(frozen=True)
class StepSpec:
    name: str
    fn: StepFn
    limit_s: float  # the step's own budget
    min_start_s: float  # below this much time left, the step is skipped rather than started


# Budgets for the full check on an H200 (benchmarks/README.md sizes them). They are caps: a step that finishes
# early leaves its time to the next, and the runner chunk gets whatever is left.
STEPS = (
    StepSpec("device", step_device, 30.0, 5.0),
    StepSpec("dit_forward", step_dit_forward, 70.0, 20.0),
    StepSpec("dit_compile", step_dit_compile, 90.0, 20.0),
    StepSpec("tokenizer", step_tokenizer, 40.0, 10.0),
    StepSpec("runner_chunk", step_runner_chunk, 600.0, 30.0),
)
assert tuple(spec.name for spec in STEPS) == STEP_NAMES
DEFAULT_BUDGET_S = {"full": 265.0, "smoke": 600.0}
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True,
                        help="folder for gpu_check.json / .md and the runner's record")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU: proves the script works")
    parser.add_argument("--budget-s", type=float, default=None, help="total seconds (default 265; smoke 600)")
    parser.add_argument("--step-budget", action="append", default=[], metavar="STEP=SECONDS",
                        help="override one step's budget, e.g. dit_compile=60")
    parser.add_argument("--skip", action="append", default=[], choices=STEP_NAMES, help="leave a step out")
    parser.add_argument("--device", default=None, help="default: cuda (full check) or cpu (smoke)")
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    parser.add_argument("--work-dir", type=Path, default=None, help="the runner's outputs (default: a temp folder)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def step_limits(overrides: list[str]) -> dict[str, float]:
    limits = {spec.name: spec.limit_s for spec in STEPS}
    for item in overrides:
        name, _, seconds = item.partition("=")
        try:
            value = float(seconds)
        except ValueError:
            value = -1.0
        if name not in limits or value <= 0:
            raise ValueError(f"--step-budget {item!r}: expected STEP=SECONDS with STEP one of {STEP_NAMES}")
        limits[name] = value
    return limits


def make_context(args: argparse.Namespace, shapes: CheckShapes) -> CheckContext:
    device = torch.device(args.device or ("cpu" if args.smoke else "cuda"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: torch {torch.__version__} sees no CUDA device; use --smoke on a CPU")
    args.out.mkdir(parents=True, exist_ok=True)
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="gen3c_gpu_check_"))
    work_dir.mkdir(parents=True, exist_ok=True)
    return CheckContext(shapes=shapes, device=device, dtype=DTYPES[args.dtype], seed=args.seed,
                        out_dir=args.out, work_dir=work_dir)


def new_report(ctx: CheckContext, mode: str, budget_s: float, limits: dict[str, float]) -> dict:
    shapes = ctx.shapes
    config = {
        "model_preset": shapes.model_preset, "tokenizer_preset": shapes.tokenizer_preset,
        "video_thw": list(shapes.video_thw), "latent_thw": list(shapes.latent_thw), "text_tokens": shapes.text_tokens,
        "chunk_steps": shapes.chunk_steps, "repeats": shapes.repeats, "device": str(ctx.device),
        "dtype": str(ctx.dtype).removeprefix("torch."), "memory_kind": MemoryProbe(ctx.device).kind,
        "seed": ctx.seed, "step_budgets_s": limits,
    }
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    return {"schema": SCHEMA, "mode": mode, "started_at": started, "wall_s": 0.0, "budget_s": budget_s,
            "config": config, "steps": {}}


def run_steps(ctx: CheckContext, report: dict, budget: Budget, limits: dict[str, float], skip: list[str]) -> None:
    start = time.monotonic()
    for spec in STEPS:
        if spec.name in skip:
            record = StepRecord(spec.name, SKIPPED, 0.0, 0.0, "left out with --skip", None, {})
        else:
            record = budget.run(spec.name, functools.partial(spec.fn, ctx), limit_s=limits[spec.name],
                                min_start_s=spec.min_start_s)
        if spec.name == "dit_compile":  # the model's last user: free it before the tokenizer and the runner
            ctx.model = None
            torch.compiler.reset()
        release_memory(ctx.device)
        report["steps"][spec.name] = record.as_dict()
        report["wall_s"] = round(time.monotonic() - start, 2)
        write_report(ctx.out_dir, report)
        detail = f": {record.note or record.error}" if record.note or record.error else ""
        print(f"[gpu_check] {spec.name}: {record.status} in {record.elapsed_s:.1f} s "
              f"(budget {record.budget_s:.0f} s){detail}", flush=True)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    mode = "smoke" if args.smoke else "full"
    try:
        limits = step_limits(args.step_budget)
        ctx = make_context(args, SMOKE if args.smoke else FULL)
    except ValueError as err:
        print(f"gpu_check: {err}", file=sys.stderr)
        return 2
    budget_s = args.budget_s or DEFAULT_BUDGET_S[mode]
    report = new_report(ctx, mode, budget_s, limits)
    run_steps(ctx, report, Budget(budget_s), limits, args.skip)
    found = problems(report, strict=args.smoke)
    report["problems"] = found
    write_report(ctx.out_dir, report)
    print(to_markdown(report), flush=True)
    for problem in found:
        print(f"[gpu_check] problem: {problem}", file=sys.stderr)
    failed = [name for name, step in report["steps"].items() if step["status"] == "failed"]
    return 1 if found or failed else 0


if __name__ == "__main__":
    sys.exit(main())
