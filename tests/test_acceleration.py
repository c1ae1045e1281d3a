"""Speed options: kernel selection on fake GPUs, the CPU kernels against ``local_attention``, the package
adapters against fakes of their documented APIs, the compile / CUDA-graph policies and runners, what
``parallelize_dit`` assembles, the position tables built once per chunk geometry, and the context-parallel path
with a chosen local kernel (2 gloo ranks against one process).
"""

from __future__ import annotations

import dataclasses
import functools
import shutil
import sys
import types
from typing import Any

import pytest
import torch

from gen3c_dist.config import ParallelConfig, RuntimeConfig
from gen3c_dist.model import acceleration, kernels
from gen3c_dist.model.acceleration import (
    CudaGraphForward,
    OpaqueSeam,
    bind_forward,
    compile_allowed,
    compile_blocks,
    cuda_graphs_allowed,
    seam_traceable,
)
from gen3c_dist.model.attention import local_attention
from gen3c_dist.model.kernels import (
    ATTENTION_KERNEL_OPTIONS,
    KernelChoice,
    KernelEnvironment,
    build_attention_kernel,
    probe_environment,
    select_attention_kernel,
)
from gen3c_dist.model.weights import random_dit
from gen3c_dist.parallel import attach_process_groups, make_cp_forward, parallelize, plan_layout
from gen3c_dist.parallel.comm_counter import CommCounter
from gen3c_dist.parallel.parallelize import check_speed_options, parallelize_dit
from tests.dist_utils import relative_error, run_distributed, tiny_inputs, tiny_model_config

ALL_PACKAGES = frozenset({"flash_attn", "flash_attn_interface", "transformer_engine"})
CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("single_thread")


def gpu(cc, *, dtype=torch.bfloat16, head_dim=128, packages=frozenset(), cudnn=91000) -> KernelEnvironment:
    """A fake CUDA machine: compute capability ``cc``, importable ``packages``, cuDNN version."""
    return KernelEnvironment("cuda", dtype, head_dim, capability=cc, packages=frozenset(packages), cudnn_version=cudnn)


def choose(requested: str, env: KernelEnvironment) -> str:
    return select_attention_kernel(requested, env).kernel


# ---- selection (pure) ---------------------------------------------------------------------------------------
def test_auto_on_hopper_prefers_flash_attention_3_then_cudnn() -> None:
    assert choose("auto", gpu((9, 0), packages=ALL_PACKAGES)) == "flash_attn_3"
    fa2_only = select_attention_kernel("auto", gpu((9, 0), packages={"flash_attn"}))
    assert fa2_only.kernel == "sdpa_cudnn"
    assert fa2_only.sdpa_fallbacks == ("sdpa_flash", "sdpa_efficient", "sdpa_math")
    assert choose("auto", gpu((9, 0), packages={"flash_attn", "transformer_engine"}, cudnn=None)) == "te"
    assert choose("auto", gpu((9, 0), packages={"flash_attn"}, cudnn=None)) == "flash_attn_2"
    assert choose("auto", gpu((9, 0), cudnn=None)) == "sdpa_flash"


def test_auto_on_other_gpus() -> None:
    assert choose("auto", gpu((10, 0), packages=ALL_PACKAGES)) == "sdpa_cudnn"  # FA3 is Hopper-only
    assert choose("auto", gpu((8, 0), packages=ALL_PACKAGES)) == "flash_attn_2"
    assert choose("auto", gpu((8, 9))) == "sdpa_flash"
    assert choose("auto", gpu((12, 0), packages={"transformer_engine"})) == "sdpa_flash"
    assert choose("auto", gpu((7, 5), dtype=torch.float16, packages=ALL_PACKAGES)) == "sdpa_efficient"
    assert choose("auto", gpu((7, 5), dtype=torch.bfloat16)) == "sdpa_math"  # no bf16 kernel before sm80


def test_fp32_and_large_heads_exclude_flash_kernels() -> None:
    assert choose("auto", gpu((9, 0), dtype=torch.float32, packages=ALL_PACKAGES)) == "sdpa_efficient"
    assert choose("auto", gpu((9, 0), head_dim=320, packages=ALL_PACKAGES)) == "sdpa_efficient"
    assert choose("auto", gpu((9, 0), head_dim=256, packages=ALL_PACKAGES)) == "flash_attn_3"
    # cuDNN: head 192 needs cuDNN > 9.22 on sm90, else the next kernel
    assert choose("auto", gpu((9, 0), head_dim=192, cudnn=91000)) == "sdpa_flash"
    assert choose("auto", gpu((9, 0), head_dim=192, cudnn=92300)) == "sdpa_cudnn"
    with pytest.raises(ValueError, match=r"runtime\.attention_kernel='flash_attn'.*float16 or bfloat16"):
        select_attention_kernel("flash_attn", gpu((9, 0), dtype=torch.float32, packages=ALL_PACKAGES))
    with pytest.raises(ValueError, match=r"runtime\.attention_kernel='sdpa_flash'.*head_dim <= 256"):
        select_attention_kernel("sdpa_flash", gpu((9, 0), head_dim=320))


def test_explicit_choices_and_refusals() -> None:
    assert choose("flash_attn", gpu((9, 0), packages={"flash_attn"})) == "flash_attn_2"
    assert choose("flash_attn", gpu((9, 0), packages={"flash_attn_interface", "flash_attn"})) == "flash_attn_3"
    with pytest.raises(ValueError, match="Hopper"):
        select_attention_kernel("flash_attn", gpu((8, 0), packages={"flash_attn_interface"}))
    with pytest.raises(ValueError, match="'transformer_engine' package"):
        select_attention_kernel("te", gpu((9, 0)))
    with pytest.raises(ValueError, match="cuDNN 9"):
        select_attention_kernel("sdpa_cudnn", gpu((9, 0), cudnn=8900))
    explicit = select_attention_kernel("sdpa_efficient", gpu((9, 0)))
    assert explicit.kernel == "sdpa_efficient" and explicit.sdpa_fallbacks == ()  # pinned: no silent fallback
    with pytest.raises(ValueError, match=r"runtime\.attention_kernel='flashattn' is unknown"):
        select_attention_kernel("flashattn", gpu((9, 0)))


def test_cpu_gets_sdpa_and_refuses_cuda_kernels() -> None:
    cpu = KernelEnvironment("cpu", torch.float32, 128, packages=ALL_PACKAGES)
    assert choose("auto", cpu) == "sdpa"
    assert choose("auto", KernelEnvironment("cpu", torch.bfloat16, 512)) == "sdpa"
    assert choose("sdpa_math", cpu) == "sdpa_math" and choose("sdpa_flash", cpu) == "sdpa_flash"
    for name in ("flash_attn", "te", "sdpa_cudnn", "sdpa_efficient"):
        with pytest.raises(ValueError, match=rf"runtime\.attention_kernel='{name}'.*CUDA device"):
            select_attention_kernel(name, cpu)
    assert probe_environment(CPU, torch.float32, 32) == KernelEnvironment("cpu", torch.float32, 32)


# ---- kernels compute local_attention ------------------------------------------------------------------------
def _qkv(heads: int = 4, head_dim: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keys longer than queries and a non-contiguous key slice, like the Ulysses path's trimmed padding."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 37, heads, head_dim, generator=g)
    k, v = (torch.randn(2, 50, heads, head_dim, generator=g)[:, :41] for _ in range(2))
    return q, k, v


def test_every_cpu_kernel_equals_local_attention() -> None:
    cpu = probe_environment(CPU, torch.float32, 32)
    runnable = {}
    for option in ATTENTION_KERNEL_OPTIONS:
        try:
            choice = select_attention_kernel(option, cpu)
        except ValueError:
            continue
        runnable[choice.kernel] = build_attention_kernel(choice)
    assert sorted(runnable) == ["sdpa", "sdpa_flash", "sdpa_math"]
    assert runnable["sdpa"] is local_attention
    q, k, v = _qkv()
    reference = local_attention(q, k, v)
    for name, kernel in runnable.items():
        out = kernel(q, k, v)
        assert out.shape == q.shape
        torch.testing.assert_close(out, reference, rtol=0, atol=1e-5, msg=f"kernel {name}")


def _reference_attention(q_BLHD, k_BLHD, v_BLHD, scale):
    """softmax(Q K^T * scale) V written out, independent of SDPA."""
    scores_BHLS = torch.einsum("blhd,bshd->bhls", q_BLHD, k_BLHD) * scale
    return torch.einsum("bhls,bshd->blhd", scores_BHLS.softmax(dim=-1), v_BLHD)


def _fake_flash_attn(returns_lse: bool):
    """``flash_attn_func`` as documented: [B, L, H, D] in and out; FlashAttention-3 betas also returned the LSE."""

    def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False):
        assert dropout_p == 0.0 and not causal and softmax_scale == q.shape[-1] ** -0.5
        out = _reference_attention(q, k, v, softmax_scale)
        return (out, torch.zeros(q.shape[0], q.shape[2], q.shape[1])) if returns_lse else out

    return types.SimpleNamespace(flash_attn_func=flash_attn_func)


class _FakeDotProductAttention:
    """TE's module as documented for ``qkv_format='bshd'``: returns [B, L, H * D], scale 1/sqrt(kv_channels)."""

    built: list[tuple[int, int]] = []

    def __init__(self, num_attention_heads, kv_channels, *, attention_dropout, qkv_format, attn_mask_type):
        assert (attention_dropout, qkv_format, attn_mask_type) == (0.0, "bshd", "no_mask")
        self.scale = kv_channels**-0.5
        _FakeDotProductAttention.built.append((num_attention_heads, kv_channels))

    def __call__(self, q, k, v):
        assert q.is_contiguous() and k.is_contiguous() and v.is_contiguous()
        return _reference_attention(q, k, v, self.scale).flatten(2)


def test_package_adapters_compute_local_attention(monkeypatch: pytest.MonkeyPatch) -> None:
    te_pytorch = types.SimpleNamespace(DotProductAttention=_FakeDotProductAttention)
    monkeypatch.setitem(sys.modules, "flash_attn", _fake_flash_attn(returns_lse=False))
    monkeypatch.setitem(sys.modules, "flash_attn_interface", _fake_flash_attn(returns_lse=True))
    monkeypatch.setitem(sys.modules, "transformer_engine", types.SimpleNamespace(pytorch=te_pytorch))
    monkeypatch.setitem(sys.modules, "transformer_engine.pytorch", te_pytorch)
    _FakeDotProductAttention.built = []
    q, k, v = _qkv()
    for kernel in ("flash_attn_2", "flash_attn_3", "te"):
        op = build_attention_kernel(KernelChoice(kernel, kernel, "test"))
        torch.testing.assert_close(op(q, k, v), local_attention(q, k, v), rtol=0, atol=1e-5, msg=kernel)
        if kernel == "te":  # a second head count (Ulysses holds H/u heads) builds a second module
            q2, k2, v2 = _qkv(heads=2)
            torch.testing.assert_close(op(q2, k2, v2), local_attention(q2, k2, v2), rtol=0, atol=1e-5)
            op(q, k, v)
    assert _FakeDotProductAttention.built == [(4, 32), (2, 32)]


def test_pinned_sdpa_runs_with_exactly_its_backends_in_its_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """``sdpa_kernel(backends, set_priority=True)``: only the chosen backends, tried in the chosen order."""
    from torch.nn.attention import SDPBackend, _cur_sdpa_kernel_backends

    seen = []

    def spy(q, k, v):
        seen.append(_cur_sdpa_kernel_backends(with_priority=True))  # enabled backends in priority order
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    monkeypatch.setattr(kernels, "F", types.SimpleNamespace(scaled_dot_product_attention=spy))
    before = _cur_sdpa_kernel_backends(with_priority=True)
    q, k, v = _qkv()
    for choice, expected in (
        (KernelChoice("sdpa_efficient", "auto", "test", ("sdpa_flash", "sdpa_math")),
         [SDPBackend.EFFICIENT_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.MATH]),
        (KernelChoice("sdpa_math", "sdpa_math", "test"), [SDPBackend.MATH]),
    ):
        torch.testing.assert_close(build_attention_kernel(choice)(q, k, v), local_attention(q, k, v), rtol=0, atol=1e-5)
        assert seen.pop() == expected
    assert _cur_sdpa_kernel_backends(with_priority=True) == before  # restored after each call


# ---- compile and CUDA-graph policy --------------------------------------------------------------------------
def test_compile_and_cuda_graph_policies() -> None:
    assert not compile_allowed(False, device_type="cpu") and compile_allowed(True, device_type="cuda")
    with pytest.raises(ValueError, match=r"runtime\.compile=true is a CUDA option"):
        compile_allowed(True, device_type="cpu")
    assert not cuda_graphs_allowed(False, device_type="cpu")
    assert cuda_graphs_allowed(True, device_type="cuda")
    with pytest.raises(ValueError, match=r"runtime\.cuda_graphs=true needs a CUDA device"):
        cuda_graphs_allowed(True, device_type="cpu")
    assert seam_traceable("sdpa_cudnn") and seam_traceable("sdpa")
    assert not seam_traceable("flash_attn_3") and not seam_traceable("te")


@functools.lru_cache(maxsize=None)
def _model() -> torch.nn.Module:
    return random_dit(tiny_model_config(4), seed=0)


def _forward(fn, case: dict[str, Any], branch: str = "cond") -> torch.Tensor:
    with torch.inference_mode():
        return fn(case["x"], case["timestep"], **case[branch])


def _layout(parallel: dict[str, Any], *, world_size: int = 1, rank: int = 0):
    """A planned layout without process groups (enough for everything but running a CP forward)."""
    return plan_layout(ParallelConfig(**parallel), world_size=world_size, rank=rank, num_heads=4,
                       guidance_runs_both=True)


def test_parallelize_dit_on_cpu() -> None:
    model, case = _model(), tiny_inputs(_model().cfg)
    single = _layout({})
    forward, notes = parallelize_dit(model, single, RuntimeConfig(), device=CPU, dtype=torch.float32)
    assert len(notes) == 1 and "attention kernel: sdpa" in notes[0]
    for branch in ("cond", "uncond", "cond"):  # the second and third calls reuse the chunk's position tables
        torch.testing.assert_close(_forward(forward, case, branch), _forward(model, case, branch), rtol=0, atol=0)
    math_runtime = RuntimeConfig(attention_kernel="sdpa_math")
    math_forward, _ = parallelize_dit(model, single, math_runtime, device=CPU, dtype=torch.float32)
    assert relative_error(_forward(math_forward, case, "uncond"), _forward(model, case, "uncond")) <= 1e-5
    for runtime, name in ((RuntimeConfig(compile=True), "compile"), (RuntimeConfig(cuda_graphs=True), "cuda_graphs"),
                          (RuntimeConfig(attention_kernel="flash_attn"), "attention_kernel")):
        with pytest.raises(ValueError, match=rf"runtime\.{name}"):
            parallelize_dit(model, single, runtime, device=CPU, dtype=torch.float32)
    plan = check_speed_options(RuntimeConfig(), device=CPU, dtype=torch.float32, head_dim=32, cp_size=4)
    assert (plan.kernel.kernel, plan.compile, plan.cuda_graphs) == ("sdpa", False, False)
    with pytest.raises(ValueError, match="degree 0"):
        check_speed_options(RuntimeConfig(), device=CPU, dtype=torch.float32, head_dim=32, cp_size=0)


def test_parallelize_dit_wiring_on_a_fake_hopper(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing runs on the (absent) GPU: the test checks what parallelize_dit assembles for CUDA."""
    monkeypatch.setitem(sys.modules, "flash_attn_interface", _fake_flash_attn(returns_lse=False))
    hopper = functools.partial(gpu, (9, 0), packages=ALL_PACKAGES)
    monkeypatch.setattr(acceleration, "probe_environment", lambda device, dtype, head_dim: hopper(head_dim=head_dim))
    cuda, model, single = torch.device("cuda"), random_dit(tiny_model_config(4), seed=0), _layout({})
    forward, notes = parallelize_dit(model, single, RuntimeConfig(compile=True, cuda_graphs=True), device=cuda,
                                     dtype=torch.bfloat16)
    assert isinstance(forward, CudaGraphForward) and forward.captures == 0
    assert "flash_attn_3" in notes[0] and "graph break" in notes[1] and "CUDA graphs" in notes[2]
    _, notes = parallelize_dit(model, single, RuntimeConfig(compile=True, attention_kernel="sdpa_cudnn"), device=cuda,
                               dtype=torch.bfloat16)
    assert "sdpa_cudnn" in notes[0] and "attention traced" in notes[1]  # an SDPA kernel on one device is traced
    built: dict[str, Any] = {}
    monkeypatch.setattr(parallelize, "make_cp_forward", lambda m, lay, **kwargs: built.update(kwargs) or "cp-forward")
    counter, cp2 = CommCounter(), _layout({"ulysses": 2}, world_size=2)
    for kernel in ("auto", "sdpa_cudnn"):  # with CP the seam breaks the graph whatever the kernel
        result, notes = parallelize_dit(model, cp2, RuntimeConfig(compile=True, attention_kernel=kernel), device=cuda,
                                        dtype=torch.bfloat16, counter=counter)
        assert result == "cp-forward" and isinstance(built["wrap_attention"].__self__, OpaqueSeam)
        assert built["counter"] is counter and "graph break" in notes[1]
        assert ("flash_attn_3" if kernel == "auto" else kernel) in notes[0]
    q, k, v = _qkv()  # the kernel of the last build (sdpa_cudnn) cannot run here; build the FA3 one again
    parallelize_dit(model, cp2, RuntimeConfig(), device=cuda, dtype=torch.bfloat16)
    torch.testing.assert_close(built["local_attn"](q, k, v), local_attention(q, k, v), rtol=0, atol=1e-5)
    assert built["wrap_attention"] is None  # no compile: the distributed op is called directly
    for build in (
        lambda: parallelize_dit(model, cp2, RuntimeConfig(cuda_graphs=True), device=cuda, dtype=torch.bfloat16),
        lambda: check_speed_options(RuntimeConfig(cuda_graphs=True), device=cuda, dtype=torch.bfloat16, head_dim=32,
                                    cp_size=2),
    ):
        with pytest.raises(ValueError, match=r"runtime\.cuda_graphs=true needs a single-device forward.*degree is 2"):
            build()


def test_bound_forward_builds_positions_once_per_chunk_geometry(monkeypatch: pytest.MonkeyPatch) -> None:
    """The chunk's forwards share one set of tables; a new fps or size builds new ones; outputs stay bit for bit."""
    model, case = random_dit(tiny_model_config(4), seed=0), tiny_inputs(_model().cfg)
    case_fps, small = {**case, "cond": {**case["cond"], "fps": 12.0}}, _smaller(case)
    calls = [(case, "cond"), (case, "uncond"), (case_fps, "cond"), (small, "cond"), (small, "uncond")]
    expected = [_forward(model, c, branch) for c, branch in calls]  # a bare call builds its own tables
    built, build = [], model.token_positions
    monkeypatch.setattr(model, "token_positions", lambda g, **kw: built.append((g, kw["fps"])) or build(g, **kw))
    forward = bind_forward(model)
    for (c, branch), reference in zip(calls, expected):
        torch.testing.assert_close(_forward(forward, c, branch), reference, rtol=0, atol=0)
    fps = case["cond"]["fps"]
    assert built == [((5, 5, 7), fps), ((5, 5, 7), 12.0), ((5, 4, 6), fps)]  # latents (5, 10, 14) and (5, 8, 12)


def _fake_record(self: CudaGraphForward):
    """CUDA-graph semantics on the CPU: capture allocates the output, every replay rewrites that same memory."""
    output = torch.full_like(self._forward(*self._static_args, **self._static_kwargs), float("nan"))

    def replay() -> None:
        output.copy_(self._forward(*self._static_args, **self._static_kwargs))

    return types.SimpleNamespace(replay=replay), output


def _smaller(case: dict[str, Any]) -> dict[str, Any]:
    """The same case on a (5, 8, 12) latent grid."""
    crop = {"x": case["x"][..., :8, :12]}
    for branch in ("cond", "uncond"):
        crop[branch] = {name: t[..., :8, :12] if name != "crossattn_emb_BLcCt" and isinstance(t, torch.Tensor) else t
                        for name, t in case[branch].items()}
    return {**case, **crop}


def test_cuda_graph_runner_copies_inputs_and_recaptures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(CudaGraphForward, "_record", _fake_record)
    model, case = _model(), tiny_inputs(_model().cfg)
    runner = CudaGraphForward(model, device=CPU)
    cond, uncond = _forward(runner, case, "cond"), _forward(runner, case, "uncond")
    assert runner.captures == 1  # cond and uncond share shapes: one graph
    torch.testing.assert_close(cond, _forward(model, case, "cond"), rtol=0, atol=0)  # not overwritten by uncond
    torch.testing.assert_close(uncond, _forward(model, case, "uncond"), rtol=0, atol=0)
    case_fps = {**case, "cond": {**case["cond"], "fps": 12.0}}
    torch.testing.assert_close(_forward(runner, case_fps), _forward(model, case_fps), rtol=0, atol=0)
    assert runner.captures == 2  # fps is baked into the graph (RoPE)
    small = _smaller(case)
    torch.testing.assert_close(_forward(runner, small), _forward(model, small), rtol=0, atol=0)
    assert runner.captures == 3


def test_compiled_blocks_keep_the_seam_eager() -> None:
    """aot_eager: dynamo tracing and graph breaks as in production, without inductor's C++ codegen (seconds)."""
    import torch._dynamo

    model, case = random_dit(tiny_model_config(4), seed=0), tiny_inputs(_model().cfg)
    reference = [_forward(model, case, branch) for branch in ("cond", "uncond")]
    calls = []

    def counting_attention(q, k, v):
        calls.append(torch.compiler.is_compiling())  # True if dynamo traced this op into a graph
        return local_attention(q, k, v)

    torch._dynamo.reset()
    graphs_before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    try:
        assert compile_blocks(model, backend="aot_eager") == model.cfg.num_blocks
        compiled = functools.partial(model, attn_op=OpaqueSeam().bind(counting_attention))
        outputs = [_forward(compiled, case, branch) for branch in ("cond", "uncond")]
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > graphs_before
    finally:
        torch._dynamo.reset()
    assert calls == [False] * (2 * model.cfg.num_blocks)  # run eagerly at every block of every forward
    for out, ref in zip(outputs, reference):
        assert relative_error(out, ref) <= 1e-5


NO_COMPILER = shutil.which("g++") is None and shutil.which("c++") is None


@pytest.mark.skipif(NO_COMPILER, reason="inductor's CPU backend needs a C++ compiler")
def test_inductor_compiled_block_matches_eager() -> None:
    """One block through inductor with the traced SDPA seam (the single-device path); ~20 s cold on 2 cores."""
    import torch._dynamo

    config = dataclasses.replace(tiny_model_config(4), num_blocks=1)
    model, case = random_dit(config, seed=0), tiny_inputs(config)
    reference = _forward(model, case)
    torch._dynamo.reset()
    try:
        compile_blocks(model)
        compiled = _forward(model, case)
    finally:
        torch._dynamo.reset()
    assert relative_error(compiled, reference) <= 1e-5


# ---- context parallel with a chosen local kernel ------------------------------------------------------------
def cp_rank(env: Any) -> dict[str, Any]:
    model, case = _model(), tiny_inputs(_model().cfg)
    layout = plan_layout(ParallelConfig(ulysses=2), world_size=2, rank=env.rank, num_heads=4, guidance_runs_both=True)
    layout = attach_process_groups(layout, timeout_s=env.timeout_s)
    cpu = probe_environment(CPU, torch.float32, 32)
    math_kernel = build_attention_kernel(select_attention_kernel("sdpa_math", cpu))
    calls, wrapped, seam = [], [], OpaqueSeam()

    def counting_kernel(q, k, v):
        calls.append((q.shape[1], k.shape[1]))
        return math_kernel(q, k, v)

    def wrap(op):
        wrapped.append(type(op).__name__)
        return seam.bind(op)

    chosen = make_cp_forward(model, layout, local_attn=counting_kernel, wrap_attention=wrap)
    default, _ = parallelize_dit(model, layout, RuntimeConfig(), device=CPU, dtype=torch.float32)
    outputs = {branch: _forward(chosen, case, branch) for branch in ("cond", "uncond")}
    return {"chosen": outputs, "default": _forward(default, case), "calls": calls, "wrapped": wrapped}


def test_context_parallel_uses_the_selected_local_kernel() -> None:
    ranks = [r.unwrap() for r in run_distributed(cp_rank, 2)]
    model, case = _model(), tiny_inputs(_model().cfg)
    reference = _forward(model, case)
    uncond = _forward(model, case, "uncond")
    for rank, result in enumerate(ranks):
        assert relative_error(result["chosen"]["cond"], reference) <= 1e-5, f"rank {rank}"
        assert relative_error(result["chosen"]["uncond"], uncond) <= 1e-5, f"rank {rank}"
        assert relative_error(result["default"], reference) <= 1e-5, f"rank {rank}"
        # Ulysses 2: all 175 tokens (padded to 176 queries) per rank, padded key trimmed, once per block per forward
        assert result["calls"] == [(176, 175)] * model.cfg.num_blocks * 2
        assert result["wrapped"] == ["HybridAttention"]  # bound once for the chunk's geometry, not per forward
