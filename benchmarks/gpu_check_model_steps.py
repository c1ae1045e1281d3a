"""Steps 1-4 of ``benchmarks/gpu_check.py``: device facts and the matmul ceiling, one DiT forward per attention
kernel, the compiled DiT, and the tokenizer. Each step fills its ``result`` dict as it goes (a stop keeps what
ran) and reads its budget from the :class:`StepClock` (``gpu_check_budget``)."""

from __future__ import annotations

from typing import Callable, Optional

import torch

from gen3c_dist.config import ParallelConfig, RuntimeConfig, model_preset
from gen3c_dist.model.acceleration import compile_blocks
from gen3c_dist.model.dit import count_parameters
from gen3c_dist.model.kernels import (
    ATTENTION_KERNEL_OPTIONS, AUTO, SDPA_MATH, KernelEnvironment, auto_preference, probe_environment,
    select_attention_kernel,
)
from gen3c_dist.model.tokenizer import VideoTokenizer, VideoTokenizerConfig, tokenizer_preset
from gen3c_dist.parallel.layout import plan_layout
from gen3c_dist.parallel.parallelize import parallelize_dit
from gen3c_dist.perf.flops import DiTFlops, dit_forward_flops

from gpu_check_budget import StepClock  # benchmarks/, beside this file
from gpu_check_context import CheckContext
from gpu_check_measure import (
    GIB, best, device_facts, dit_inputs, free_memory_bytes, matmul_rate, random_dit_on_device, rate_tflops,
    release_memory, weights_gib,
)

# Before anything is measured, a full forward is predicted at this share of the matmul ceiling (the README's
# projection assumes 0.70 for GEMMs and 0.35-0.75 for attention); later forwards use the measured time.
PREDICTED_MFU = 0.4
MATMUL_WARMUP = 3



def build_forward(model, runtime: RuntimeConfig, *, device: torch.device, dtype: torch.dtype):
    """The runner's own single-device forward (parallelize_dit on a one-rank layout) with ``runtime``'s options."""
    layout = plan_layout(ParallelConfig(), world_size=1, rank=0, num_heads=model.cfg.num_heads, guidance_runs_both=True)
    return parallelize_dit(model, layout, runtime, device=device, dtype=dtype)

def _short(err: BaseException, limit: int = 300) -> str:
    text = f"{type(err).__name__}: {err}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ---- step 1 -----------------------------------------------------------------------------------------------
def step_device(ctx: CheckContext, clock: StepClock, result: dict) -> None:
    result.update(device_facts(ctx.device))
    shapes = ctx.shapes
    result["matmul"] = matmul_rate(ctx.device, n=shapes.matmul_n, dtype=ctx.dtype, warmup=MATMUL_WARMUP,
                                   repeats=shapes.matmul_repeats, seed=ctx.seed)
    ctx.matmul_flops_per_s = result["matmul"]["tflops"] * 1e12


# ---- step 2 -----------------------------------------------------------------------------------------------
def kernel_candidates(env: KernelEnvironment) -> tuple[list[dict], dict[str, str]]:
    """One entry per distinct kernel some ``runtime.attention_kernel`` option runs in ``env``, auto's choice first
    and the rest in auto's preference order; and every option refused there, with the reason."""
    auto = select_attention_kernel(AUTO, env).kernel
    entries: dict[str, dict] = {auto: _kernel_entry(auto, [AUTO], is_auto=True)}
    refused: dict[str, str] = {}
    for option in ATTENTION_KERNEL_OPTIONS:
        if option == AUTO:
            continue
        try:
            kernel = select_attention_kernel(option, env).kernel
        except ValueError as err:
            refused[option] = str(err)
            continue
        entries.setdefault(kernel, _kernel_entry(kernel, [], is_auto=False))["options"].append(option)
    preference = list(auto_preference(env))
    rank = {kernel: (not entry["auto"], preference.index(kernel) if kernel in preference else len(preference))
            for kernel, entry in entries.items()}
    return sorted(entries.values(), key=lambda entry: rank[entry["kernel"]]), refused


def _kernel_entry(kernel: str, options: list[str], *, is_auto: bool) -> dict:
    return {"kernel": kernel, "options": options, "auto": is_auto, "status": "pending", "reason": None,
            "warmup_s": None, "forward_s": [], "best_s": None, "tflops": None, "mfu": None, "peak_memory_gib": None}


def score_matrix_refusal(kernel: str, *, heads: int, tokens: int, dtype: torch.dtype, free_bytes: int) -> Optional[str]:
    """Why an unfused kernel cannot run at this size: sdpa_math holds the scores and the probabilities,
    ``2 x heads x tokens^2`` values (about 380 GiB in bf16 at 56,320 tokens), or None when they fit."""
    if kernel != SDPA_MATH:
        return None
    needed = 2 * heads * tokens**2 * torch.finfo(dtype).bits // 8
    if needed <= free_bytes:
        return None
    return f"materialises {needed / GIB:.0f} GiB of attention scores; {free_bytes / GIB:.0f} GiB are free"


def step_dit_forward(ctx: CheckContext, clock: StepClock, result: dict) -> None:
    shapes, device, dtype = ctx.shapes, ctx.device, ctx.dtype
    cfg = model_preset(shapes.model_preset)
    flops = dit_forward_flops(cfg, shapes.latent_thw, text_tokens=shapes.text_tokens)
    result.update(model_preset=shapes.model_preset, latent_thw=list(shapes.latent_thw), tokens=flops.tokens,
                  text_tokens=shapes.text_tokens, dtype=str(dtype).removeprefix("torch."),
                  flops={"total": flops.total, "attention": flops.attention, "linear": flops.linear})
    model, init_s = ctx.timer.wall(lambda: random_dit_on_device(cfg, seed=ctx.seed, device=device, dtype=dtype))
    ctx.model = model
    result.update(parameters=count_parameters(model), init_s=init_s, init_device=device.type,
                  weights_gib=weights_gib(model))
    env = probe_environment(device, dtype, cfg.head_dim)
    entries, refused = kernel_candidates(env)
    ctx.auto_kernel = entries[0]["kernel"]
    result.update(kernel_packages=sorted(env.packages), auto_kernel=ctx.auto_kernel, refused=refused, kernels=entries)
    full = dit_inputs(cfg, shapes.latent_thw, text_tokens=shapes.text_tokens, device=device, dtype=dtype, seed=ctx.seed)
    warm = dit_inputs(cfg, shapes.warmup_latent_thw, text_tokens=shapes.text_tokens, device=device, dtype=dtype,
                      seed=ctx.seed)
    try:
        for repeat in range(shapes.repeats):  # every kernel once before any kernel twice
            for entry in entries:
                if entry["status"] == ("pending" if repeat == 0 else "ran"):
                    _kernel_forward(ctx, clock, entry, full, warm, flops, first=repeat == 0)
    finally:  # also when the alarm stops a forward: every entry says what happened to it
        for entry in entries:
            if entry["status"] == "running":
                entry["status"] = "ran" if entry["forward_s"] else "stopped"
                entry["reason"] = entry["reason"] or "the step's budget ran out during its forward"
            elif entry["status"] == "pending":
                entry["status"], entry["reason"] = "left_out", "its predicted forward did not fit the step's budget"


def first_forward_guess(ctx: CheckContext, flops: int) -> float:
    return flops / (PREDICTED_MFU * ctx.matmul_flops_per_s) if ctx.matmul_flops_per_s else 0.0


def _kernel_forward(ctx: CheckContext, clock: StepClock, entry: dict, full: tuple, warm: tuple, dit_flops: DiTFlops,
                    *, first: bool) -> None:
    """One timed full-size forward with ``entry``'s kernel (after a small warm-up forward the first time)."""
    model, timer, memory, flops = ctx.model, ctx.timer, ctx.memory, dit_flops.total
    if first:
        refusal = score_matrix_refusal(entry["kernel"], heads=model.cfg.num_heads, tokens=dit_flops.tokens,
                                       dtype=ctx.dtype, free_bytes=free_memory_bytes(ctx.device))
        if refusal is not None:
            entry["status"], entry["reason"] = "skipped", refusal
            return
    predicted = entry["best_s"] or max(ctx.eager_best_s.values(), default=0.0) or first_forward_guess(ctx, flops)
    if not clock.fits(f"{entry['kernel']} forward {len(entry['forward_s']) + 1}", predicted):
        return
    entry["status"] = "running"
    try:
        forward, _ = build_forward(model, RuntimeConfig(attention_kernel=entry["options"][0]), device=ctx.device,
                                   dtype=ctx.dtype)
        with torch.inference_mode():
            if first:
                _, entry["warmup_s"] = timer.time(lambda: forward(*warm[0], **warm[1]))
            memory.reset()
            _, seconds = timer.time(lambda: forward(*full[0], **full[1]))
    except Exception as err:  # one kernel failing (a shape its checks refuse, memory) must not end the step
        entry["status"] = "ran" if entry["forward_s"] else "failed"  # a failed repeat keeps the forward it has
        entry["reason"] = _short(err)
        release_memory(ctx.device)
        return
    entry["forward_s"].append(seconds)
    entry["best_s"] = best(entry["forward_s"])
    entry["tflops"] = rate_tflops(flops, entry["best_s"])
    entry["mfu"] = ctx.mfu(flops / entry["best_s"])
    entry["peak_memory_gib"] = max(entry["peak_memory_gib"] or 0.0, memory.peak_gib())
    entry["status"] = "ran"
    ctx.eager_best_s[entry["kernel"]] = entry["best_s"]


# ---- step 3 -----------------------------------------------------------------------------------------------
def compiled_forward(ctx: CheckContext) -> tuple[Callable, list[str], str]:
    """The forward with ``runtime.compile=true`` (inductor) on CUDA. runtime.compile is refused off CUDA, so the
    CPU smoke run compiles the same blocks with ``aot_eager`` (dynamo and AOT tracing, no code generation), the
    backend the CPU tests use, and binds the kernel through the same ``build_forward``."""
    model = ctx.model
    if ctx.device.type == "cuda":
        forward, notes = build_forward(model, RuntimeConfig(attention_kernel=AUTO, compile=True), device=ctx.device,
                                       dtype=ctx.dtype)
        return forward, notes, "inductor"
    count = compile_blocks(model, backend="aot_eager")
    forward, notes = build_forward(model, RuntimeConfig(attention_kernel=AUTO), device=ctx.device, dtype=ctx.dtype)
    return forward, notes + [f"torch.compile: {count} blocks in place, backend aot_eager (CPU smoke run)"], "aot_eager"


def step_dit_compile(ctx: CheckContext, clock: StepClock, result: dict) -> None:
    if ctx.model is None:
        clock.skip("the dit_forward step built no model to compile")
        return
    shapes, timer, memory = ctx.shapes, ctx.timer, ctx.memory
    flops = dit_forward_flops(ctx.model.cfg, shapes.latent_thw, text_tokens=shapes.text_tokens).total
    eager = ctx.eager_best_s.get(ctx.auto_kernel)
    forward, notes, backend = compiled_forward(ctx)
    result.update(kernel=ctx.auto_kernel, backend=backend, notes=notes, first_call_s=None, forward_s=[], best_s=None,
                  compile_s=None, eager_best_s=eager, speedup_vs_eager=None, tflops=None, mfu=None,
                  peak_memory_gib=None)
    args, kwargs = dit_inputs(ctx.model.cfg, shapes.latent_thw, text_tokens=shapes.text_tokens, device=ctx.device,
                              dtype=ctx.dtype, seed=ctx.seed)
    if not clock.fits("first compiled call", eager or first_forward_guess(ctx, flops)):
        return
    with torch.inference_mode():
        memory.reset()
        _, result["first_call_s"] = timer.wall(lambda: forward(*args, **kwargs))  # compile + one forward
        for repeat in range(shapes.repeats):
            if not clock.fits(f"compiled forward {repeat + 1}", result["best_s"] or result["first_call_s"]):
                break
            _, seconds = timer.time(lambda: forward(*args, **kwargs))
            result["forward_s"].append(seconds)
            result["best_s"] = best(result["forward_s"])
            result["compile_s"] = result["first_call_s"] - result["best_s"]
            result["speedup_vs_eager"] = eager / result["best_s"] if eager else None
            result["tflops"] = rate_tflops(flops, result["best_s"])
            result["mfu"] = ctx.mfu(flops / result["best_s"])
            result["peak_memory_gib"] = memory.peak_gib()


# ---- step 4 -----------------------------------------------------------------------------------------------
def step_tokenizer(ctx: CheckContext, clock: StepClock, result: dict) -> None:
    shapes, device, dtype, timer, memory = ctx.shapes, ctx.device, ctx.dtype, ctx.timer, ctx.memory
    network, config = tokenizer_preset(shapes.tokenizer_preset), VideoTokenizerConfig()
    # VideoTokenizer.random draws on a CPU generator, then moves the modules: ~0.1 B weights, seconds at most.
    tokenizer, init_s = timer.wall(lambda: VideoTokenizer.random(network, config, seed=ctx.seed + 1, device=device,
                                                                dtype=dtype))
    parameters = sum(p.numel() for part in (tokenizer.encoder, tokenizer.decoder) for p in part.parameters())
    frames, height, width = shapes.video_thw
    result.update(preset=shapes.tokenizer_preset, parameters=parameters, init_s=init_s, init_device="cpu",
                  video_thw=list(shapes.video_thw), latent_thw=None, warmup_s=None, encode_s=[], decode_s=[],
                  encode_best_s=None, decode_best_s=None, encode_peak_memory_gib=None, decode_peak_memory_gib=None)
    generator = torch.Generator(device=device).manual_seed(ctx.seed + 2)

    def video(h: int, w: int) -> torch.Tensor:
        return torch.rand((1, 3, frames, h, w), device=device, dtype=dtype, generator=generator) * 2 - 1

    _, result["warmup_s"] = timer.wall(lambda: tokenizer.decode(tokenizer.encode(video(*shapes.warmup_video_hw))))
    full = video(height, width)
    for repeat in range(shapes.repeats):
        if not clock.fits(f"encode {repeat + 1}", result["encode_best_s"] or 0.0):
            break
        memory.reset()
        latent, seconds = timer.time(lambda: tokenizer.encode(full))
        result["encode_s"].append(seconds)
        result["encode_best_s"] = ctx.tokenizer_best_s["encode"] = best(result["encode_s"])
        result["encode_peak_memory_gib"] = max(result["encode_peak_memory_gib"] or 0.0, memory.peak_gib())
        result["latent_thw"] = list(latent.shape[2:])
        if not clock.fits(f"decode {repeat + 1}", result["decode_best_s"] or 0.0):
            break
        memory.reset()
        _, seconds = timer.time(lambda: tokenizer.decode(latent))
        result["decode_s"].append(seconds)
        result["decode_best_s"] = ctx.tokenizer_best_s["decode"] = best(result["decode_s"])
        result["decode_peak_memory_gib"] = max(result["decode_peak_memory_gib"] or 0.0, memory.peak_gib())
