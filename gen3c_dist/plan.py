"""Dry run of a launch: ``python -m gen3c_dist.plan --world-size 8 [--ranks-per-node 8] [overrides ...]``.

Takes the runner's config name and overrides, plus the world it would run on, and prints without starting any
process or loading any weight:

* the layout ``parallel.layout=auto`` would choose, and why (the same function the runner calls);
* every other layout that fits, with projected seconds per clip and makespan (the cost model of
  ``benchmarks/projection.py``) and the DiT bytes each rank sends per denoising step (the exact formula the
  runner's traffic counters are tested against);
* a per-rank memory estimate: weights counted exactly on the meta device, activations estimated.

Like torchtitan's dry run, it then builds every rank's process groups on PyTorch's ``fake`` backend, one rank
at a time in this one process, so a layout whose groups cannot be built fails here rather than on the cluster.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from typing import Optional

import torch
import torch.distributed as dist

from gen3c_dist.config import AttentionBackend, DType, LayoutMode, ParallelConfig, RunConfig, register_configs
from gen3c_dist.errors import InputError
from gen3c_dist.model.dit import GEN3CDiT
from gen3c_dist.model.tokenizer.config import tokenizer_preset
from gen3c_dist.model.tokenizer.decoder import VideoDecoder
from gen3c_dist.model.tokenizer.encoder import VideoEncoder
from gen3c_dist.parallel.auto_layout import LayoutChoice, LayoutRequest, choose_layout, makespan_chunks
from gen3c_dist.parallel.comm_counter import expected_bytes_per_step
from gen3c_dist.parallel.layout import ParallelLayout, plan_layout
from gen3c_dist.parallel.mesh import attach_process_groups
from gen3c_dist.perf.hardware import GPUS, gpu_spec
from gen3c_dist.perf.projection import run_chunk_cost
from gen3c_dist.run import CONF_DIR, _register_resolvers, to_run_config
from gen3c_dist.runner.jobs import batch_jobs, check_num_frames, single_job
from gen3c_dist.sampling.guidance import runs_both_passes
from gen3c_dist.shapes import dit_tokens, latent_thw

# Parameter counts of the models whose weights this repo does not build natively, counted once by building
# them: MoGe v1 ViT-L (moge.model.v1.MoGeModel with encoder dinov2_vitl14 and the released config) and the
# T5-11B encoder (transformers.T5EncoderModel with the google-t5/t5-11b config, on the meta device).
MOGE_VITL_PARAMS = 315_240_772
T5_11B_ENCODER_PARAMS = 4_864_791_552
GIB = 1024**3


@dataclasses.dataclass(frozen=True)
class Candidate:
    layout: ParallelLayout
    chunk_s: float
    makespan_s: float
    bytes_per_step: int


def compose_config(config_name: str, overrides: list[str]) -> RunConfig:
    from hydra import compose, initialize_config_dir  # Hydra only where a config is composed
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    _register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return to_run_config(compose(config_name=config_name, overrides=overrides))


def video_chunks(cfg: RunConfig) -> tuple[int, ...]:
    """Chunks per video of the run (a batch's valid lines; files are not opened)."""
    jobs = batch_jobs(cfg)[0] if cfg.batch.jsonl is not None else [single_job(cfg)]
    return tuple(check_num_frames(job.input.num_frames) for job in jobs)


def element_size(cfg: RunConfig, *, cuda: bool = True) -> int:
    dtype = cfg.runtime.dtype
    if dtype == DType.auto:
        return 2 if cuda else 4
    return 4 if dtype == DType.float32 else 2


def every_layout(cfg: RunConfig, request: LayoutRequest, chunk_cost, elt: int) -> list[Candidate]:
    """Every (data, cfg, ulysses, ring) that plan_layout accepts as given (no re-factoring), costed."""
    latent = (1, 16, *latent_thw(cfg.input.height, cfg.input.width))
    found = []
    world = request.world_size
    for data in [d for d in range(1, world + 1) if world % d == 0]:
        for cfg_degree in (1, 2):
            replica = world // data
            if replica % cfg_degree:
                continue
            cp = replica // cfg_degree
            for ulysses in [u for u in range(1, cp + 1) if cp % u == 0]:
                degrees = dataclasses.replace(cfg.parallel, data=data, cfg=cfg_degree, ulysses=ulysses, ring=cp // ulysses)
                try:
                    layout = plan_layout(degrees, world_size=world, rank=0, num_heads=request.num_heads,
                                         guidance_runs_both=request.guidance_runs_both)
                except ValueError:
                    continue
                if layout.note:
                    continue
                chunk_s = chunk_cost(layout)
                sent = sum(expected_bytes_per_step(layout, model_cfg=cfg.model, latent_BCTHW=latent, element_size=elt).values())
                found.append(Candidate(layout, chunk_s, makespan_chunks(request.video_chunks, data) * chunk_s, sent))
    return sorted(found, key=lambda c: (c.makespan_s, c.layout.data))


def _params(module_fn) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in module_fn().parameters())


def memory_rows(cfg: RunConfig, layout: ParallelLayout, elt: int) -> list[tuple[str, dict[str, float]]]:
    """GiB per role: DiT weights (exact), DiT activations (estimate), conditioning models (exact counts)."""
    dit = _params(lambda: GEN3CDiT(cfg.model)) * elt
    network = tokenizer_preset(cfg.tokenizer.preset)
    tokenizer = (_params(lambda: VideoEncoder(network)) + _params(lambda: VideoDecoder(network))) * elt
    tokens = dit_tokens(cfg.model, latent_thw(cfg.input.height, cfg.input.width))
    local = math.ceil(tokens / layout.cp)
    width = cfg.model.model_channels
    # ESTIMATE of one forward's peak working set: Q, K, V and the attention output, the MLP hidden layer and the
    # residual stream (4 + mlp_ratio + 1 token-width tensors), plus the Ulysses/ring receive buffers (3).
    activations = local * width * (4 + cfg.model.mlp_ratio + 1 + 3) * elt
    lead_models = tokenizer
    if cfg.text.enabled:
        lead_models += T5_11B_ENCODER_PARAMS * 4  # T5 runs in float32 (spec 6)
    if cfg.checkpoints.moge is not None or not cfg.checkpoints.random_weights:
        lead_models += MOGE_VITL_PARAMS * 4
    if cfg.runtime.offload:
        lead_models = 0.0  # they rest on the CPU and visit the GPU one at a time
    shared_tokenizer = tokenizer if (cfg.parallel.tokenizer == "group" and layout.replica_size > 1
                                     and not cfg.runtime.offload) else 0
    rows = [("replica lead", {"dit": dit, "activations": activations, "conditioning": lead_models})]
    if layout.replica_size > 1:
        rows.append(("other ranks", {"dit": dit, "activations": activations, "conditioning": shared_tokenizer}))
    return [(role, {k: v / GIB for k, v in parts.items()}) for role, parts in rows]


def check_groups_on_fake_backend(layout: ParallelLayout, *, num_heads: int, guidance_runs_both: bool,
                                 timeout_s: float, max_ranks: int = 64) -> int:
    """Build every rank's process groups on the ``fake`` backend (one rank at a time); returns ranks checked."""
    from torch.testing._internal.distributed.fake_pg import FakeStore  # torch-internal: only for this check

    ranks = range(min(layout.world_size, max_ranks))
    config = dataclasses.replace(
        _config_of(layout), attention=layout.attention,
    )
    for rank in ranks:
        dist.init_process_group("fake", store=FakeStore(), rank=rank, world_size=layout.world_size)
        try:
            mine = plan_layout(config, world_size=layout.world_size, rank=rank, num_heads=num_heads,
                               guidance_runs_both=guidance_runs_both)
            attach_process_groups(mine, timeout_s=timeout_s)
        finally:
            dist.destroy_process_group()
    return len(ranks)


def _config_of(layout: ParallelLayout):
    return ParallelConfig(layout=LayoutMode.explicit, data=layout.data, cfg=layout.cfg, ulysses=layout.ulysses,
                          ring=layout.ring, attention=AttentionBackend(layout.attention))


def format_plan(cfg: RunConfig, choice: LayoutChoice, chosen: ParallelLayout, candidates: list[Candidate],
                memory: list, *, gpu_name: str, ranks_per_node: int, chunks: tuple[int, ...], top: int = 12) -> str:
    videos = f"{len(chunks)} video(s), {sum(chunks)} chunk(s) of 121 frames"
    lines = [f"gen3c_dist plan: world {chosen.world_size} ({ranks_per_node} per node), {videos}, "
             f"{cfg.sampler.steps} steps at {cfg.input.height}x{cfg.input.width}",
             f"parallel.layout={cfg.parallel.layout} chooses: {chosen.describe()}",
             f"  why: {choice.reason}",
             "  Inside a replica the degrees follow fixed rules (cfg 2 when both guidance passes run, Ulysses within "
             "a node, ring across); the projection below only picks the replica count. It counts the ring's K/V "
             "passing as hidden under attention, which is why pure ring can come out a little ahead in it.",
             "",
             f"Layouts that fit (projected on the {gpu_name} model of gen3c_dist.perf.projection; * = chosen):",
             f"  {'data':>4} {'cfg':>3} {'ulysses':>7} {'ring':>4} {'s/chunk':>9} {'makespan s':>11} {'DiT bytes/step/rank':>20}"]
    picked = (chosen.data, chosen.cfg, chosen.ulysses, chosen.ring)
    shown = candidates[:top]
    if not any((c.layout.data, c.layout.cfg, c.layout.ulysses, c.layout.ring) == picked for c in shown):
        shown += [c for c in candidates if (c.layout.data, c.layout.cfg, c.layout.ulysses, c.layout.ring) == picked]
    for c in shown:
        mark = "*" if (c.layout.data, c.layout.cfg, c.layout.ulysses, c.layout.ring) == picked else " "
        lines.append(f"{mark} {c.layout.data:>4} {c.layout.cfg:>3} {c.layout.ulysses:>7} {c.layout.ring:>4} "
                     f"{c.chunk_s:>9.1f} {c.makespan_s:>11.1f} {c.bytes_per_step:>20,}")
    if len(candidates) > len(shown):
        lines.append(f"  ... {len(candidates) - len(shown)} more")
    lines += ["", "Memory per rank, GiB (weights exact from the meta device; activations an estimate):"]
    for role, parts in memory:
        total = sum(parts.values())
        lines.append(f"  {role:13s} DiT weights {parts['dit']:.2f} + activations ~{parts['activations']:.2f} "
                     f"+ conditioning models {parts['conditioning']:.2f} = ~{total:.2f}")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--world-size", type=int, required=True, help="ranks the run would start (GPUs)")
    parser.add_argument("--ranks-per-node", type=int, default=None, help="GPUs per node (default: the world size)")
    parser.add_argument("--gpu", choices=sorted(GPUS), default="h100_sxm", help="GPU model for the projection")
    parser.add_argument("--config-name", default="gen3c_7b")
    parser.add_argument("overrides", nargs="*", help="the runner's overrides, key=value")
    args = parser.parse_args(argv)
    try:
        return _plan(args)
    except InputError as err:
        print(f"gen3c_dist.plan: {err}", file=sys.stderr)
        return 2


def _plan(args) -> int:
    cfg = compose_config(args.config_name, args.overrides)
    per_node = args.ranks_per_node or args.world_size
    chunks = video_chunks(cfg)
    both = runs_both_passes(cfg.sampler.guidance_policy, cfg.sampler.guidance)
    gpu = gpu_spec(args.gpu)
    cost = run_chunk_cost(cfg.model, height=cfg.input.height, width=cfg.input.width, steps=cfg.sampler.steps,
                          guidance_runs_both=both, tokenizer=cfg.parallel.tokenizer, gpus_per_node=per_node, gpu=gpu)
    request = LayoutRequest(world_size=args.world_size, ranks_per_node=per_node, num_heads=cfg.model.num_heads,
                            guidance_runs_both=both, video_chunks=chunks)
    choice = choose_layout(cfg.parallel, request, cost)
    chosen = plan_layout(choice.config, world_size=args.world_size, rank=0, num_heads=cfg.model.num_heads,
                         guidance_runs_both=both)
    elt = element_size(cfg)
    print(format_plan(cfg, choice, chosen, every_layout(cfg, request, cost, elt), memory_rows(cfg, chosen, elt),
                      gpu_name=gpu.name, ranks_per_node=per_node, chunks=chunks))
    checked = check_groups_on_fake_backend(chosen, num_heads=cfg.model.num_heads, guidance_runs_both=both,
                                           timeout_s=cfg.distributed.timeout_s)
    print(f"\nProcess groups built on the fake backend for {checked} of {chosen.world_size} ranks: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
