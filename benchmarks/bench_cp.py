"""Context-parallel benchmark on CPU: communication bytes per step per rank, and per-step time of 1 vs 2 processes.

    python benchmarks/bench_cp.py                                   # tiny preset, ulysses 2 and ring 2 and cfg 2
    python benchmarks/bench_cp.py --ulysses 2 --ring 2 --latent 4 16 24
    python benchmarks/bench_cp.py --preset gen3c_cosmos_7b --latent 16 88 160 --ulysses 8 --formula-only

Part 1 launches ``cfg x ulysses x ring`` gloo processes itself, runs a few guided steps of a random-weight model
with a :class:`CommCounter`, and prints every rank's measured bytes per step next to the exact layout formula
and the textbook approximations (Ulysses ~ 4 S D / N per layer, ring ~ 2 S D per layer). Part 2 times the tiny
preset on 1 process and on 2 processes (cfg 2, ulysses 2, ring 2), one thread each, so two processes use the
two cores one process cannot. Timings on a shared machine are noisy; the script prints the median step.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from typing import Any

import torch

from gen3c_dist.model.inputs import DiTInputs

from gen3c_dist.config import DistributedConfig, ParallelConfig, model_preset
from gen3c_dist.model.weights import random_dit
from gen3c_dist.parallel import (
    CommCounter,
    attach_process_groups,
    guided_output,
    init_distributed,
    make_cp_forward,
    plan_layout,
)
from gen3c_dist.parallel.comm_counter import expected_bytes_per_step
from local_ranks import launch_local  # benchmarks/local_ranks.py, beside this script


@dataclasses.dataclass(frozen=True)
class Job:
    preset: str
    latent_THW: tuple[int, int, int]
    parallel: dict[str, Any]
    steps: int
    threads: int


def _inputs(model_cfg: Any, latent_THW: tuple[int, int, int]) -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    T, H, W = latent_THW
    pose = torch.randn(1, 32 * model_cfg.frame_buffer_max, T, H, W, generator=g)
    shared = {
        "condition_video_input_mask_B1THW": torch.zeros(1, 1, T, H, W),
        "padding_mask_B1HW": torch.zeros(1, 1, H, W),
        "fps": 24.0,
    }
    text = torch.randn(2, 1, 16, model_cfg.crossattn_emb_channels, generator=g)
    return {
        "x": torch.randn(1, 16, T, H, W, generator=g),
        "cond": {"crossattn_emb_BLcCt": text[0], "condition_video_pose_BCTHW": pose, **shared},
        "uncond": {"crossattn_emb_BLcCt": text[1], "condition_video_pose_BCTHW": torch.zeros_like(pose), **shared},
    }


def run_rank(job: Job) -> dict[str, Any]:
    """One rank: ``job.steps`` guided steps (the first is warm-up for timing); bytes and seconds per step."""
    torch.set_num_threads(job.threads)
    env = init_distributed(DistributedConfig(backend="gloo", timeout_s=300))
    model_cfg = model_preset(job.preset)
    layout = plan_layout(ParallelConfig(**job.parallel), world_size=env.world_size, rank=env.rank,
                         num_heads=model_cfg.num_heads, guidance_runs_both=True)
    layout = attach_process_groups(layout, timeout_s=env.timeout_s)
    model = random_dit(model_cfg, seed=0)
    counter = CommCounter()
    forward_fn = make_cp_forward(model, layout, counter=counter)
    case = _inputs(model_cfg, job.latent_THW)
    seconds = []
    with torch.inference_mode():
        for step in range(job.steps):
            start = time.perf_counter()
            guided_output(forward_fn, layout, case["x"], torch.tensor([0.1 * step]), DiTInputs(**case["cond"]),
                          DiTInputs(**case["uncond"]), 1.0,
                          counter=counter)
            seconds.append(time.perf_counter() - start)
    expected = expected_bytes_per_step(layout, model_cfg=model_cfg, latent_BCTHW=(1, 16, *job.latent_THW), element_size=4)
    return {"rank": env.rank, "steps": counter.steps, "seconds": seconds, "expected": expected, "layout": layout.describe()}



def launch(job: Job) -> list[dict[str, Any]]:
    """Run ``job`` on cfg x ulysses x ring local processes (spawned fresh: nothing inherited from this one)."""
    world = job.parallel.get("cfg", 1) * job.parallel.get("ulysses", 1) * job.parallel.get("ring", 1)
    return launch_local(run_rank, job, world)


def textbook_bytes(model_cfg: Any, *, tokens: int, ulysses: int, ring: int, forwards: int) -> dict[str, float]:
    """Large-N approximations per step, fp32: all-to-all ~ 4 S D / N and ring ~ 2 S D / u per layer (pure ring:
    2 S D). They drop the (u-1)/u and (r-1)/r factors and the padding, so they overstate small groups."""
    per_layer = tokens * model_cfg.model_channels * 4
    layers = model_cfg.num_blocks * forwards
    approx = {}
    if ulysses > 1:
        approx["all_to_all ~4SD/N"] = 4 * per_layer / (ulysses * ring) * layers
    if ring > 1:
        approx["ring_p2p ~2SD/u"] = 2 * per_layer / ulysses * layers
    return approx


def print_bytes(job: Job, results: list[dict[str, Any]]) -> None:
    model_cfg = model_preset(job.preset)
    T, H, W = job.latent_THW
    tokens = T * (H // 2) * (W // 2)
    print(f"\n== bytes per step per rank: preset {job.preset}, latent {job.latent_THW} = {tokens} tokens, "
          f"{results[0]['layout']}, fp32")
    for result in results:
        measured = result["steps"][-1]
        for kind in sorted(set(measured) | set(result["expected"])):
            print(f"  rank {result['rank']}  {kind:14s} measured {measured.get(kind, 0):>12,d}  "
                  f"formula {result['expected'].get(kind, 0):>12,d}")
    forwards = 2 // job.parallel.get("cfg", 1)
    ulysses, ring = job.parallel.get("ulysses", 1), job.parallel.get("ring", 1)
    approx = textbook_bytes(model_cfg, tokens=tokens, ulysses=ulysses, ring=ring, forwards=forwards)
    if approx:
        print("  large-N approximation: " + ", ".join(f"{k} = {v:,.0f}" for k, v in approx.items()))


def print_formula_only(args: argparse.Namespace) -> None:
    model_cfg = model_preset(args.preset)
    ulysses = max(args.ulysses, 1)
    parallel = ParallelConfig(ulysses=ulysses, ring=args.ring, cfg=args.cfg)
    world = args.cfg * ulysses * args.ring
    layout = plan_layout(parallel, world_size=world, rank=0, num_heads=model_cfg.num_heads, guidance_runs_both=True)
    per_step = expected_bytes_per_step(layout, model_cfg=model_cfg, latent_BCTHW=(1, 16, *args.latent), element_size=2)
    print(f"formula, bf16, {layout.describe()}, preset {args.preset}, latent {tuple(args.latent)}:")
    for kind, nbytes in per_step.items():
        print(f"  {kind:14s} {nbytes / 1e9:8.3f} GB per step per rank")


def time_one_vs_two(args: argparse.Namespace) -> None:
    job = Job(preset="tiny", latent_THW=tuple(args.time_latent), parallel={}, steps=args.steps, threads=1)
    tokens = job.latent_THW[0] * (job.latent_THW[1] // 2) * (job.latent_THW[2] // 2)
    print(f"\n== per-step time, tiny preset, {tokens} tokens, median of {args.steps - 1} steps after 1 warm-up")
    rows = [("1 process, 1 thread", {}, 1), ("1 process, 2 threads", {}, 2), ("2 processes cfg 2", {"cfg": 2}, 1),
            ("2 processes ulysses 2", {"ulysses": 2}, 1), ("2 processes ring 2", {"ring": 2}, 1)]
    for label, parallel, threads in rows:
        results = launch(dataclasses.replace(job, parallel=parallel, threads=threads))
        step_s = max(statistics.median(r["seconds"][1:]) for r in results)  # the slowest rank sets the pace
        print(f"  {label:24s} {step_s * 1e3:8.1f} ms/step")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--latent", type=int, nargs=3, default=[5, 10, 14], metavar=("T", "H", "W"))
    parser.add_argument("--ulysses", type=int, default=0, help="0: run ulysses 2, ring 2 and cfg 2 in turn")
    parser.add_argument("--ring", type=int, default=1)
    parser.add_argument("--cfg", type=int, default=1)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--time-latent", type=int, nargs=3, default=[8, 32, 48], metavar=("T", "H", "W"))
    parser.add_argument("--formula-only", action="store_true", help="print the formula without running anything")
    parser.add_argument("--skip-timing", action="store_true")
    args = parser.parse_args()
    if args.formula_only:
        print_formula_only(args)
        return
    layouts = [{"ulysses": args.ulysses, "ring": args.ring, "cfg": args.cfg}] if args.ulysses else [
        {"ulysses": 2}, {"ring": 2}, {"cfg": 2}, {"ulysses": 2, "ring": 2}]
    for parallel in layouts:
        job = Job(preset=args.preset, latent_THW=tuple(args.latent), parallel=parallel, steps=2, threads=1)
        print_bytes(job, launch(job))
    if not args.skip_timing:
        time_one_vs_two(args)


if __name__ == "__main__":
    main()
