"""Per-step DiT time with the per-forward setup of the old forward against the per-chunk setup of today's, in one run.

    python benchmarks/bench_forward_setup.py                          # tiny and 7B-width x 2 blocks, 16x16x24
    python benchmarks/bench_forward_setup.py --models tiny --latent 16 32 48 --repeats 7 --cp 2
    python benchmarks/bench_forward_setup.py --models 7b-width-no-blocks --latent 16 88 160  # 704x1280, setup only

"per forward" is what the DiT forward did on every call before the position tables moved to once per chunk
geometry; it exists only here, written out below: the whole sequence embedded on every rank, the full RoPE
angles and the full ``[L, D]`` pos-emb built, then sliced to this rank's tokens (CP), the attention op bound anew,
and cos/sin recomputed from the angles in each of the two ``apply_rope`` calls of every self-attention.
"per chunk" is the runtime's forward (``make_cp_forward``, which on one rank is ``bind_forward``): tables built
once per (grid, fps) for the rank's own tokens, cos/sin once, only the rank's tokens embedded.

A step is a cond and an uncond forward, as in sampling with guidance. The two paths alternate step by step
(ABBA order) after one warm-up step each, on 1 thread per process; the script prints the median step of each,
their ratio, and whether the two paths' outputs are bitwise equal. ``--cp 2`` also runs both paths on 2 gloo
processes with Ulysses 2 (the slowest rank sets the pace).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import statistics
import time
from typing import Any, Callable, Iterator

import torch

from gen3c_dist.config import DistributedConfig, ModelConfig, ParallelConfig, model_preset
from gen3c_dist.model import dit
from gen3c_dist.model.dit import GEN3CDiT, TokenPositions
from gen3c_dist.model.weights import random_dit
from gen3c_dist.parallel import (
    attach_process_groups,
    init_distributed,
    make_cp_forward,
    plan_layout,
    shutdown_distributed,
)
from gen3c_dist.parallel.backends import attention_factory
from gen3c_dist.parallel.sharding import TokenShard, gather_tokens, shard_tokens
from local_ranks import launch_local  # benchmarks/local_ranks.py, beside this script

MODELS = {
    "tiny": lambda: model_preset("tiny"),
    "7b-width-2-blocks": lambda: dataclasses.replace(model_preset("gen3c_cosmos_7b"), num_blocks=2),
    # No blocks: what is left is the setup, the final layer and the gather, so the setup's share shows.
    "tiny-no-blocks": lambda: dataclasses.replace(model_preset("tiny"), num_blocks=0),
    "7b-width-no-blocks": lambda: dataclasses.replace(model_preset("gen3c_cosmos_7b"), num_blocks=0),
}


@dataclasses.dataclass(frozen=True)
class Job:
    model: str
    latent_THW: tuple[int, int, int]
    repeats: int
    parallel: dict[str, int]


# ---- the old per-forward setup, kept here only -----------------------------------------------------------
def _rope_from_angles(x_BLHD: torch.Tensor, angles_LD: torch.Tensor, _same_angles_LD: torch.Tensor) -> torch.Tensor:
    """The old ``apply_rope``: cos and sin of the angles on every call (twice per self-attention, for q and k)."""
    cos_L1D = torch.cos(angles_LD)[:, None, :].to(x_BLHD.dtype)
    sin_L1D = torch.sin(angles_LD)[:, None, :].to(x_BLHD.dtype)
    x1, x2 = x_BLHD.chunk(2, dim=-1)
    return x_BLHD * cos_L1D + torch.cat([-x2, x1], dim=-1) * sin_L1D


@contextlib.contextmanager
def old_rope() -> Iterator[None]:
    """While active, the blocks rotate with :func:`_rope_from_angles`; the tables then carry angles, not cos/sin."""
    current = dit.apply_rope
    dit.apply_rope = _rope_from_angles
    try:
        yield
    finally:
        dit.apply_rope = current


def per_forward_setup(model: GEN3CDiT, layout: Any) -> Callable[..., torch.Tensor]:
    """The forward as it was: every table built for the whole sequence on every call, then sliced (CP)."""
    bind_attention = attention_factory(layout, model_cfg=model.cfg, counter=None) if layout.cp > 1 else None

    def forward(x_BCTHW, timesteps_B, crossattn_emb_BLcCt, *, fps=None, **conditioning) -> torch.Tensor:
        patches_BLP, grid_THW = model.patch_tokens(x_BCTHW, **conditioning)
        x_BLD = model.embed_tokens(patches_BLP)  # the whole sequence, on every rank
        angles_LD = model.rope_angles(grid_THW, fps=fps, device=x_BCTHW.device)
        pos_emb_LD = model.extra_pos_embedder(grid_THW)
        with old_rope():
            if bind_attention is None:
                ctx = model.block_context(timesteps_B, crossattn_emb_BLcCt,
                                          TokenPositions(grid_THW, angles_LD, angles_LD, pos_emb_LD))
                return model.unembed(model.run_blocks(x_BLD, ctx), ctx)
            shard = TokenShard(tokens=math.prod(grid_THW), degree=layout.cp, index=layout.cp_index)
            angles_lD = shard_tokens(angles_LD[None], shard)[0]
            positions = TokenPositions(grid_THW, angles_lD, angles_lD, shard_tokens(pos_emb_LD[None], shard)[0])
            ctx = model.block_context(timesteps_B, crossattn_emb_BLcCt, positions)
            x_BlD = model.run_blocks(shard_tokens(x_BLD, shard), ctx, attn_op=bind_attention(shard))
        tokens_BlP = model.final_layer(x_BlD, ctx.affline_BD, ctx.adaln_lora_B3D)
        return model.unpatchify(gather_tokens(tokens_BlP, shard, group=layout.groups.cp, counter=None), grid_THW)

    return forward


# ---- timing ------------------------------------------------------------------------------------------------
def _inputs(model_cfg: ModelConfig, latent_THW: tuple[int, int, int]) -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    T, H, W = latent_THW
    pose = torch.randn(1, 32 * model_cfg.frame_buffer_max, T, H, W, generator=g)
    shared = {"condition_video_input_mask_B1THW": torch.zeros(1, 1, T, H, W),
              "padding_mask_B1HW": torch.zeros(1, 1, H, W), "fps": 24.0}
    text = torch.randn(2, 1, 16, model_cfg.crossattn_emb_channels, generator=g)
    return {
        "x": torch.randn(1, 16, T, H, W, generator=g), "timestep": torch.tensor([0.3]),
        "cond": {"crossattn_emb_BLcCt": text[0], "condition_video_pose_BCTHW": pose, **shared},
        "uncond": {"crossattn_emb_BLcCt": text[1], "condition_video_pose_BCTHW": torch.zeros_like(pose), **shared},
    }


def _step(forward: Callable[..., torch.Tensor], case: dict[str, Any]) -> tuple[float, list[torch.Tensor]]:
    start = time.perf_counter()
    outputs = [forward(case["x"], case["timestep"], **case[branch]) for branch in ("cond", "uncond")]
    return time.perf_counter() - start, outputs


def run_rank(job: Job) -> dict[str, Any]:
    """Both paths on this rank, alternating; seconds per step of each and whether their outputs match bit for bit."""
    torch.set_num_threads(1)
    env = init_distributed(DistributedConfig(backend="gloo", timeout_s=1800), environ=None if job.parallel else {})
    model = random_dit(MODELS[job.model](), seed=0)
    layout = plan_layout(ParallelConfig(**job.parallel), world_size=env.world_size, rank=env.rank,
                         num_heads=model.cfg.num_heads, guidance_runs_both=True)
    layout = attach_process_groups(layout, timeout_s=env.timeout_s)
    paths = {"per forward": per_forward_setup(model, layout), "per chunk": make_cp_forward(model, layout)}
    case = _inputs(model.cfg, job.latent_THW)
    seconds: dict[str, list[float]] = {name: [] for name in paths}
    with torch.inference_mode():
        outputs = {name: _step(forward, case)[1] for name, forward in paths.items()}  # warm-up
        for repeat in range(job.repeats):
            order = list(paths) if repeat % 2 == 0 else list(paths)[::-1]
            for name in order:
                seconds[name].append(_step(paths[name], case)[0])
    identical = all(torch.equal(a, b) for a, b in zip(outputs["per forward"], outputs["per chunk"]))
    shutdown_distributed(env)
    return {"rank": env.rank, "seconds": seconds, "identical": identical}


def report(job: Job, results: list[dict[str, Any]]) -> None:
    T, H, W = job.latent_THW
    cfg = MODELS[job.model]()
    tokens = T // cfg.patch_temporal * (H // cfg.patch_spatial) * (W // cfg.patch_spatial)
    step = {name: max(statistics.median(r["seconds"][name]) for r in results) for name in results[0]["seconds"]}
    old, new = step["per forward"], step["per chunk"]
    where = f"ulysses {len(results)}" if job.parallel else "1 process"
    print(f"{job.model:18s} D={cfg.model_channels:<4d} blocks={cfg.num_blocks} latent {T}x{H}x{W} ({tokens} tokens) "
          f"{where:9s}  per forward {old * 1e3:9.1f} ms/step  per chunk {new * 1e3:9.1f} ms/step  "
          f"ratio {old / new:5.3f}  bitwise equal: {all(r['identical'] for r in results)}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["tiny", "7b-width-2-blocks"])
    parser.add_argument("--latent", type=int, nargs=3, default=[16, 16, 24], metavar=("T", "H", "W"))
    parser.add_argument("--repeats", type=int, default=4, help="timed steps per path, after one warm-up step")
    parser.add_argument("--cp", type=int, default=0, help="also run on this many gloo processes (Ulysses)")
    args = parser.parse_args()
    print(f"median seconds per step (cond + uncond forward) of {args.repeats} alternating steps, 1 thread per "
          f"process, fp32, torch {torch.__version__}", flush=True)
    for name in args.models:
        job = Job(name, tuple(args.latent), args.repeats, {})
        report(job, [run_rank(job)])
        if args.cp > 1:
            job = dataclasses.replace(job, parallel={"ulysses": args.cp})
            report(job, launch_local(run_rank, job, args.cp))


if __name__ == "__main__":
    main()
