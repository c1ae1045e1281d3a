"""Projected seconds per clip for GEN3C-Cosmos-7B on 1 to 64 GPUs, per layout and GPU type, and a check of the
single-GPU prediction against the published Cosmos-1.0-7B-Video2World time.

The model, per denoising step and GPU (N GPUs = cfg x ulysses x ring; every GPU does 2/N of the step's work):

* GEMMs: ``forwards x linear FLOPs / N`` at ``peak x gemm efficiency``; attention cores likewise at the
  attention efficiency of the chosen kernel class. FLOPs are exact (:mod:`gen3c_dist.perf.flops`).
* Element-wise work (norms, modulation, RoPE, GELU, residuals) as HBM traffic: ``passes`` reads or writes of
  the local ``tokens x D`` bf16 activation per block and forward, at 80% of HBM bandwidth. ASSUMPTION:
  40 passes for a fused stack. Counting this repo's eager ``dit.py`` with a dispatch-mode byte count on the
  meta device gives ~107 passes per block (mul 44, add 24, pow 12, GELU 8, mean 6, LayerNorm 6, cat 4, ...);
  fused kernels (TransformerEngine LayerNorm/RoPE, fused modulate) remove most of the fp32 round trips.
* Communication from the exact per-rank bytes of
  :func:`gen3c_dist.parallel.comm_counter.expected_bytes_per_step` (bf16), over links chosen by rank
  placement (8 GPUs per node, Ulysses ranks consecutive, ring across them, cfg outermost): NVLink within the
  NVLink domain, PCIe within the node outside it, InfiniBand between nodes; each at 80% of the per-direction
  rate (:mod:`gen3c_dist.perf.hardware`). An all-to-all or gather spreads its bytes evenly over the peers and
  takes as long as its slowest link class; a ring step goes at the speed of its slowest hop.
* Overlap: none, except the ring's K/V passing, which hides under the self-attention core it feeds
  (``exposed = max(0, ring time - self-attention time)``), as ring attention is designed to. Ulysses
  all-to-alls, output gathers and the cfg exchange are added in full. Per-message latency (~10 us x a few
  hundred messages per step) is left out: it is under 1% of any step here.
* Non-DiT time (conditioning, tokenizer encode/decode, writing): for GEN3C, :mod:`gen3c_dist.perf.non_dit`
  with the runner's tokenizer placement (``--tokenizer group|lead``); ``--tokenizer constant`` uses a serial
  constant, not divided by N (the anchor check always does).

Check: 1 H100 SXM, 35 steps x 2 forwards, plus :data:`NON_DIT_ESTIMATE_S`, against ~383 s (anchor A1:
Cosmos-1.0-Diffusion-7B-Video2World, 121 frames at 704x1280, 1x H100, end to end without model init,
``NVIDIA/Cosmos:cosmos1/models/diffusion/README.md`` @71f19b0). Cosmos-1.0-7B has GEN3C's transformer shape
(28 blocks, D 4096, 32 heads, 56,320 tokens); only the patch embedding's input width differs (<0.01% of the
FLOPs). The efficiencies are the datasheet/paper figures of :mod:`gen3c_dist.perf.hardware`, not fitted.

NON_DIT_ESTIMATE_S = 20 s, ASSUMPTION for the anchor's pipeline on one H100 (range 10-40 s):
tokenizer encode of the 121-frame conditioning clip and decode of 121 frames at 704x1280 (35.7 + 61.3 TFLOP
by an exact count of this repo's CV8x8x8 networks, but memory-bound on multi-GB activations: ~10 s);
T5-XXL on two prompts (<1 s); guardrails (text blocklist and Llama-Guard, per-frame face blur and the video
safety filter on 121 frames: ~5 s); the offloaded prompt upsampler's run, mp4 encode and host copies (~4 s).
The check also prints the DiT-only error (non-DiT = 0), which no choice of that estimate can lower.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from collections import defaultdict
from typing import Optional

from gen3c_dist.config import ModelConfig, model_preset
from gen3c_dist.parallel.comm_counter import expected_bytes_per_step
from gen3c_dist.parallel.layout import ParallelLayout
from gen3c_dist.perf.flops import dit_forward_flops, dit_tokens, latent_thw
from gen3c_dist.perf.grid import LAYOUTS, checked_layout, layout_degrees
from gen3c_dist.perf.hardware import GPUS, HBM_EFFICIENCY, LINK_EFFICIENCY, GpuSpec, gpu_spec
from gen3c_dist.perf.non_dit import NonDiTModel

COSMOS_7B_V2W_H100_S = 383.0
NON_DIT_ESTIMATE_S = 20.0
ELEMENTWISE_PASSES = 40
WORLD_SIZES = (1, 2, 4, 8, 16, 32, 64)
# Which ranks each communication kind runs over, and its pattern.
COMM_GROUPS = {"all_to_all": ("ulysses_ranks", "all"), "ring_p2p": ("ring_ranks", "ring"),
               "gather_output": ("cp_ranks", "all"), "cfg_exchange": ("cfg_ranks", "all")}


@dataclasses.dataclass(frozen=True)
class Settings:
    steps: int = 35
    forwards: int = 2  # official guidance: cond and uncond every step
    non_dit_s: float = NON_DIT_ESTIMATE_S
    attention_kernel: str = "fa2"
    gpus_per_node: int = 8
    elementwise_passes: int = ELEMENTWISE_PASSES
    element_size: int = 2  # bf16
    # GEN3C's non-DiT work with the runner's tokenizer placement; None: the serial constant ``non_dit_s``
    # (what the anchor check uses, since the anchor is Cosmos-1.0 Video2World, not GEN3C).
    non_dit: Optional[NonDiTModel] = None

    def non_dit_seconds(self, replica_size: int) -> float:
        return self.non_dit_s if self.non_dit is None else self.non_dit.seconds(replica_size)


@dataclasses.dataclass(frozen=True)
class StepEstimate:
    gemm_s: float
    attention_s: float
    self_attention_s: float
    elementwise_s: float
    comm_s: dict  # kind -> seconds if nothing overlapped
    exposed_comm_s: float

    @property
    def step_s(self) -> float:
        return self.gemm_s + self.attention_s + self.elementwise_s + self.exposed_comm_s


def link_bytes_per_s(gpu: GpuSpec, a: int, b: int, *, gpus_per_node: int) -> float:
    """Per-direction bandwidth between global ranks ``a`` and ``b`` (consecutive ranks fill a node)."""
    if a // gpus_per_node != b // gpus_per_node:
        rate = gpu.ib_gb_s
    elif a // gpu.nvlink_domain == b // gpu.nvlink_domain:
        rate = gpu.nvlink_gb_s / 2
    else:
        rate = gpu.pcie_gb_s
    return rate * 1e9 * LINK_EFFICIENCY


def pattern_seconds(nbytes: int, ranks: tuple, *, pattern: str, gpu: GpuSpec, gpus_per_node: int) -> float:
    """Seconds for one rank (the group's first) to send ``nbytes`` in an all-to-all-like or ring pattern."""
    if nbytes <= 0 or len(ranks) < 2:
        return 0.0
    if pattern == "ring":
        hops = zip(ranks, ranks[1:] + ranks[:1])
        return nbytes / min(link_bytes_per_s(gpu, a, b, gpus_per_node=gpus_per_node) for a, b in hops)
    by_rate: dict[float, float] = defaultdict(float)
    for peer in ranks[1:]:
        by_rate[link_bytes_per_s(gpu, ranks[0], peer, gpus_per_node=gpus_per_node)] += nbytes / (len(ranks) - 1)
    return max(share / rate for rate, share in by_rate.items())


def estimate_step(model_cfg: ModelConfig, latent_THW: tuple, layout: ParallelLayout, gpu: GpuSpec,
                  settings: Settings) -> StepEstimate:
    """Seconds of one denoising step on every GPU of ``layout`` (rank 0's groups stand for all)."""
    flops = dit_forward_flops(model_cfg, latent_THW)
    per_gpu, peak = settings.forwards / layout.replica_size, gpu.peak_flops
    attention_eff = gpu.attention_eff(settings.attention_kernel)
    local_tokens = math.ceil(flops.tokens / layout.cp)
    traffic = (settings.forwards // layout.cfg) * model_cfg.num_blocks * settings.elementwise_passes * local_tokens
    traffic *= model_cfg.model_channels * settings.element_size
    per_rank = expected_bytes_per_step(layout, model_cfg=model_cfg, latent_BCTHW=(1, 16, *latent_THW),
                                       element_size=settings.element_size)
    comm = {}
    for kind, nbytes in per_rank.items():
        attribute, pattern = COMM_GROUPS[kind]
        comm[kind] = pattern_seconds(nbytes, getattr(layout, attribute), pattern=pattern, gpu=gpu,
                                     gpus_per_node=settings.gpus_per_node)
    self_attention_s = per_gpu * flops.self_attn_core / (peak * attention_eff)
    exposed = sum(max(0.0, t - self_attention_s) if kind == "ring_p2p" else t for kind, t in comm.items())
    return StepEstimate(
        gemm_s=per_gpu * flops.linear / (peak * gpu.gemm_efficiency),
        attention_s=per_gpu * flops.attention / (peak * attention_eff),
        self_attention_s=self_attention_s,
        elementwise_s=traffic / (gpu.hbm_tb_s * 1e12 * HBM_EFFICIENCY),
        comm_s=comm,
        exposed_comm_s=exposed,
    )


def chunk_seconds(model_cfg: ModelConfig, latent_THW: tuple, layout: ParallelLayout, gpu: GpuSpec,
                  settings: Settings) -> float:
    """Projected seconds for one 121-frame chunk on one replica of ``layout``: the steps plus the non-DiT work."""
    step = estimate_step(model_cfg, latent_THW, layout, gpu, settings)
    return settings.steps * step.step_s + settings.non_dit_seconds(layout.replica_size)


def run_chunk_cost(model_cfg: ModelConfig, *, height: int, width: int, steps: int, guidance_runs_both: bool,
                   tokenizer: str, gpus_per_node: int, gpu: GpuSpec):
    """``layout -> seconds per chunk`` for a run's shape, as ``parallel.layout=auto`` compares layouts."""
    settings = Settings(steps=steps, forwards=2 if guidance_runs_both else 1, gpus_per_node=gpus_per_node,
                        non_dit=NonDiTModel(tokenizer=str(tokenizer)))
    latent = latent_thw(height, width)
    return lambda layout: chunk_seconds(model_cfg, latent, layout, gpu, settings)


def projection_layout(name: str, world_size: int, *, model_cfg: ModelConfig, tokens: int,
                      gpus_per_node: int) -> ParallelLayout:
    """The layout ``name`` on ``world_size`` GPUs, or ValueError (plan_layout refuses it, or tokens do not divide)."""
    degrees = layout_degrees(name, world_size, num_heads=model_cfg.num_heads, gpus_per_node=gpus_per_node)
    layout = checked_layout(degrees, world_size=world_size, num_heads=model_cfg.num_heads, guidance_runs_both=True)
    if tokens % layout.cp:
        raise ValueError(f"{tokens} tokens do not divide into {layout.cp} equal shards")
    return layout


def projection_rows(gpus: list[GpuSpec], *, settings: Settings, model_cfg: Optional[ModelConfig] = None,
                    latent_THW: tuple = (16, 88, 160), world_sizes=WORLD_SIZES, layouts=LAYOUTS) -> list[dict]:
    """One row per (GPU, world size, layout) that fits, with ``clip_s`` and ``fastest`` per (GPU, world size)."""
    model_cfg = model_cfg or model_preset("gen3c_cosmos_7b")
    tokens = dit_tokens(model_cfg, latent_THW)
    rows = []
    for gpu in gpus:
        for world in world_sizes:
            for name in layouts:
                try:
                    layout = projection_layout(name, world, model_cfg=model_cfg, tokens=tokens,
                                               gpus_per_node=settings.gpus_per_node)
                except ValueError:
                    continue
                step = estimate_step(model_cfg, latent_THW, layout, gpu, settings)
                rows.append({"gpu": gpu.key, "world_size": world, "layout": name, "ulysses": layout.ulysses,
                             "ring": layout.ring, "cfg": layout.cfg, "step_s": step.step_s,
                             "exposed_comm_s": step.exposed_comm_s,
                             "non_dit_s": settings.non_dit_seconds(layout.replica_size),
                             "clip_s": settings.steps * step.step_s + settings.non_dit_seconds(layout.replica_size),
                             "fastest": False})
    best: dict[tuple, dict] = {}
    for row in rows:
        key = (row["gpu"], row["world_size"])
        if key not in best or row["clip_s"] < best[key]["clip_s"]:
            best[key] = row
    for row in best.values():
        row["fastest"] = True
    return rows


def format_table(rows: list[dict], gpu: GpuSpec, settings: Settings, world_sizes=WORLD_SIZES) -> str:
    """Seconds per clip, layouts down, world sizes across; ``*`` marks the fastest layout per world size."""
    mine = {(r["layout"], r["world_size"]): r for r in rows if r["gpu"] == gpu.key}
    eff = gpu.attention_eff(settings.attention_kernel)
    lines = [f"== {gpu.name}: {gpu.bf16_tflops:g} TFLOP/s bf16, HBM {gpu.hbm_tb_s:g} TB/s, NVLink {gpu.nvlink_gb_s:g} "
             f"GB/s (domain {gpu.nvlink_domain}), PCIe {gpu.pcie_gb_s:g} GB/s, IB {gpu.ib_gb_s:g} GB/s; efficiency "
             f"gemm {gpu.gemm_efficiency:.2f}, attention {eff:.2f} ({settings.attention_kernel})",
             f"{'s per clip':14s}" + "".join(f"{'N=' + str(n):>10s}" for n in world_sizes)]
    for name in LAYOUTS:
        cells = []
        for n in world_sizes:
            row = mine.get((name, n))
            cells.append(f"{'-':>10s}" if row is None else f"{row['clip_s']:9.1f}{'*' if row['fastest'] else ' '}")
        if any(c.strip() != "-" for c in cells):
            lines.append(f"{name:14s}" + "".join(cells))
    return "\n".join(lines)


def check_against_anchor(settings: Settings) -> dict:
    """The 1-GPU H100 SXM prediction against ~383 s, with and without the non-DiT estimate."""
    model_cfg = model_preset("gen3c_cosmos_7b")
    layout = projection_layout("single", 1, model_cfg=model_cfg, tokens=56_320, gpus_per_node=settings.gpus_per_node)
    step = estimate_step(model_cfg, (16, 88, 160), layout, gpu_spec("h100_sxm"), settings)
    dit_s = settings.steps * step.step_s
    predicted = dit_s + settings.non_dit_s
    return {"anchor_s": COSMOS_7B_V2W_H100_S, "dit_s": dit_s, "non_dit_s": settings.non_dit_s, "predicted_s": predicted,
            "forward_s": step.step_s / settings.forwards, "error": predicted / COSMOS_7B_V2W_H100_S - 1,
            "dit_only_error": dit_s / COSMOS_7B_V2W_H100_S - 1}


def format_check(check: dict, settings: Settings) -> str:
    return (
        f"Check against Cosmos-1.0-7B-Video2World on 1x H100 SXM, ~{check['anchor_s']:.0f} s per clip "
        f"(NVIDIA/Cosmos:cosmos1/models/diffusion/README.md @71f19b0):\n"
        f"  DiT {settings.steps} steps x {settings.forwards} forwards x {check['forward_s']:.3f} s = {check['dit_s']:.1f} s;"
        f" non-DiT estimate {check['non_dit_s']:.1f} s; predicted {check['predicted_s']:.1f} s\n"
        f"  relative error {check['error']:+.1%} (DiT only, non-DiT = 0: {check['dit_only_error']:+.1%})"
    )


def _non_dit_text(settings: Settings) -> str:
    model = settings.non_dit
    if model is None:
        return f"non-DiT {settings.non_dit_s:g} s serial"
    return (f"non-DiT: lead {model.lead_serial_s:g} s + {model.encodes} encodes x {model.encode_s:g} s + decode "
            f"{model.decode_s:g} s, tokenizer placement '{model.tokenizer}' (assumed, gen3c_dist.perf.non_dit)")


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description="Projected seconds per GEN3C-7B clip per layout and GPU count.")
    parser.add_argument("--gpus", nargs="+", default=list(GPUS), choices=list(GPUS))
    parser.add_argument("--world-sizes", nargs="+", type=int, default=list(WORLD_SIZES))
    parser.add_argument("--steps", type=int, default=35)
    parser.add_argument("--resolution", default="704x1280", help="HEIGHTxWIDTH of the 121-frame clip")
    parser.add_argument("--non-dit-s", type=float, default=NON_DIT_ESTIMATE_S, help="serial non-DiT seconds per clip")
    parser.add_argument("--tokenizer", choices=["group", "lead", "constant"], default="group",
                        help="GEN3C non-DiT model with the runner's tokenizer placement (gen3c_dist.perf.non_dit), "
                             "or the serial constant --non-dit-s")
    parser.add_argument("--attention-kernel", choices=["fa2", "fa3"], default="fa2")
    parser.add_argument("--elementwise-passes", type=int, default=ELEMENTWISE_PASSES)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    args = parser.parse_args(argv)
    height, width = (int(v) for v in args.resolution.lower().split("x"))
    non_dit = None if args.tokenizer == "constant" else NonDiTModel(tokenizer=args.tokenizer)
    settings = Settings(steps=args.steps, non_dit_s=args.non_dit_s, attention_kernel=args.attention_kernel,
                        gpus_per_node=args.gpus_per_node, elementwise_passes=args.elementwise_passes, non_dit=non_dit)
    latent = latent_thw(height, width)
    gpus = [gpu_spec(key) for key in args.gpus]
    rows = projection_rows(gpus, settings=settings, latent_THW=latent, world_sizes=args.world_sizes)
    model_cfg = model_preset("gen3c_cosmos_7b")
    print(f"GEN3C-Cosmos-7B, 121 frames at {height}x{width} ({dit_tokens(model_cfg, latent):,} tokens), "
          f"{settings.steps} steps x {settings.forwards} forwards, bf16, {_non_dit_text(settings)}; "
          f"ring K/V overlapped with attention, other communication not; * = fastest layout for that N\n")
    for gpu in gpus:
        print(format_table(rows, gpu, settings, world_sizes=args.world_sizes) + "\n")
    print(format_check(check_against_anchor(settings), settings))


if __name__ == "__main__":
    main()
