"""Single-device speed options (``runtime.attention_kernel / compile / cuda_graphs``) for the DiT forward.

The pieces, which :func:`gen3c_dist.parallel.parallelize.parallelize_dit` applies in order: the attention
kernel (:mod:`gen3c_dist.model.kernels`, chosen by :func:`check_speed_options`), :func:`compile_blocks`
(with an :class:`OpaqueSeam` where the attention op must stay out of the graph), :func:`bind_forward` (the
forward with its op bound and its position tables built once per chunk) and :class:`CudaGraphForward`.

Decisions:

* ``compile`` compiles each ``TransformerBlock`` in place (``nn.Module.compile``, the "regional compilation"
  recipe), not the whole forward. The 28 blocks are identical, so dynamo traces one graph and every block
  reuses it (seconds to compile instead of minutes), and everything around the blocks stays eager. Parameter
  names and the state dict do not change. The self-attention seam is either traced (SDPA kernels: inductor
  fuses the layout changes around it) or an :class:`OpaqueSeam`, one graph break per block: for flash-attn /
  TE, whose Python wrappers dynamo need not understand, and for any op behind the seam that communicates
  (its collectives, byte counting and timeouts then run eagerly between two compiled graphs).
* ``cuda_graphs`` captures the whole forward (:class:`CudaGraphForward`): the sampler calls it 70 times per
  chunk (cond and uncond, 35 steps) with the same shapes, so one capture serves a chunk, the next chunks and
  every video of the same size; a new shape or fps re-captures. A graph replays GPU work only, so a forward
  with host-side work inside (collectives) must not be captured; that is the caller's refusal to make.
* Both options are refused on the CPU rather than ignored: the CPU path exists for tests and the demo, where a
  compile only adds start-up time, and a flag that silently does nothing would mislead.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional

import torch

from gen3c_dist.config import RuntimeConfig
from gen3c_dist.errors import InputError
from gen3c_dist.model.attention import AttentionOp, local_attention
from gen3c_dist.model.dit import GEN3CDiT
from gen3c_dist.model.inputs import ForwardFn
from gen3c_dist.model.kernels import SDPA_KERNELS, KernelChoice, probe_environment, select_attention_kernel



# ---- policy (pure) ----------------------------------------------------------------------------------------
def compile_allowed(requested: bool, *, device_type: str) -> bool:
    """Whether to compile the blocks; ValueError when asked for off CUDA."""
    if not requested:
        return False
    if device_type != "cuda":
        raise InputError(
            f"runtime.compile=true is a CUDA option; this model runs on {device_type}, where compiling only adds "
            "start-up time to short test and demo runs. Set runtime.compile=false"
        )
    return True


def cuda_graphs_allowed(requested: bool, *, device_type: str) -> bool:
    """Whether to capture the forward in a CUDA graph; ValueError off CUDA."""
    if not requested:
        return False
    if device_type != "cuda":
        raise InputError(f"runtime.cuda_graphs=true needs a CUDA device; this model runs on {device_type}")
    return True


def seam_traceable(kernel: str) -> bool:
    """Whether compiled blocks may trace this single-device kernel instead of breaking the graph around it."""
    return kernel in SDPA_KERNELS


# ---- compile ----------------------------------------------------------------------------------------------
class OpaqueSeam:
    """One attention op for the whole run that torch.compile calls eagerly (a graph break) instead of tracing.

    Dynamo guards on the identity of a function it calls, and a caller may bind a new op when the input size
    changes, so the seam must be one stable object: :meth:`bind` points it at the op and returns the same callable.
    """

    def __init__(self) -> None:
        self._op: Optional[AttentionOp] = None
        self._call = torch.compiler.disable(self._forward)

    def _forward(self, q_BLHD: torch.Tensor, k_BLHD: torch.Tensor, v_BLHD: torch.Tensor) -> torch.Tensor:
        if self._op is None:
            raise RuntimeError("OpaqueSeam was called before bind()")
        return self._op(q_BLHD, k_BLHD, v_BLHD)

    def bind(self, op: AttentionOp) -> AttentionOp:
        self._op = op
        return self._call


def compile_blocks(model: GEN3CDiT, *, backend: str = "inductor") -> int:
    """Compile every DiT block in place (dynamic=False: the shapes are fixed per run); returns how many.

    ``backend`` is torch.compile's; the CPU tests use ``aot_eager`` to check the tracing without C++ codegen.
    """
    for block in model.blocks.values():
        block.compile(dynamic=False, backend=backend)
    return len(model.blocks)


# ---- CUDA graphs ------------------------------------------------------------------------------------------
def input_signature(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple:
    """What a captured graph is valid for: tensor shapes/dtypes/devices and the other arguments' values."""

    def describe(value: Any) -> tuple:
        if isinstance(value, torch.Tensor):
            return ("tensor", tuple(value.shape), value.dtype, value.device)
        return ("value", value)

    return tuple(describe(a) for a in args) + tuple((name, describe(kwargs[name])) for name in sorted(kwargs))


def _static_copy(value: Any) -> Any:
    return value.clone(memory_format=torch.contiguous_format) if isinstance(value, torch.Tensor) else value


class CudaGraphForward:
    """The forward captured once per input signature and replayed; inputs are copied into static buffers.

    Each call returns a copy of the static output: the sampler holds the cond output while the uncond pass
    replays the same graph into the same memory.
    """

    def __init__(self, forward_fn: ForwardFn, *, device: torch.device, warmup_calls: int = 2) -> None:
        self._forward, self._device, self._warmup_calls = forward_fn, device, warmup_calls
        self._signature: Optional[tuple] = None
        self._graph: Any = None
        self._static_args: tuple[Any, ...] = ()
        self._static_kwargs: dict[str, Any] = {}
        self._static_output: Optional[torch.Tensor] = None
        self.captures = 0

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        signature = input_signature(args, kwargs)
        if signature != self._signature:
            self._graph = self._static_output = None  # free the old graph's memory pool before capturing again
            self._static_args = tuple(_static_copy(a) for a in args)
            self._static_kwargs = {name: _static_copy(v) for name, v in kwargs.items()}
            self._graph, self._static_output = self._record()
            self._signature = signature
            self.captures += 1
        else:
            for static, value in zip(self._static_args, args):
                if isinstance(static, torch.Tensor):
                    static.copy_(value)
            for name, static in self._static_kwargs.items():
                if isinstance(static, torch.Tensor):
                    static.copy_(kwargs[name])
        self._graph.replay()
        return self._static_output.clone()

    def _record(self) -> tuple[Any, torch.Tensor]:
        """Warm up on a side stream (compilation, cuBLAS / package lazy init), then capture one forward."""
        side = torch.cuda.Stream(self._device)
        side.wait_stream(torch.cuda.current_stream(self._device))
        with torch.cuda.stream(side):
            for _ in range(self._warmup_calls):
                self._forward(*self._static_args, **self._static_kwargs)
        torch.cuda.current_stream(self._device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread_local: the runner writes outputs and loads models in other threads while this one captures.
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            output = self._forward(*self._static_args, **self._static_kwargs)
        return graph, output


# ---- the single-device forward ----------------------------------------------------------------------------
def bind_forward(model: GEN3CDiT, attn_op: AttentionOp = local_attention) -> ForwardFn:
    """``model.forward`` with ``attn_op`` bound, and its TokenPositions built once per latent grid and fps.

    A chunk's 70 forwards share the grid and fps, so they share one set of RoPE cos/sin and pos-emb tables (the
    same values a bare ``model(...)`` call builds for itself); a new size or fps replaces them (one entry is
    kept). The tables are read from the weights when first built: load the weights before the first call.
    """
    positions_for = functools.lru_cache(maxsize=1)(model.token_positions)

    def forward(
        x_BCTHW: torch.Tensor, timesteps_B: torch.Tensor, crossattn_emb_BLcCt: torch.Tensor, **inputs: Any
    ) -> torch.Tensor:
        grid_THW = model.patch_grid(tuple(x_BCTHW.shape[-3:]))
        positions = positions_for(grid_THW, fps=inputs.get("fps"), device=x_BCTHW.device)
        return model(x_BCTHW, timesteps_B, crossattn_emb_BLcCt, **inputs, attn_op=attn_op, positions=positions)

    return forward


@dataclasses.dataclass(frozen=True)
class SpeedPlan:
    kernel: KernelChoice
    compile: bool
    cuda_graphs: bool


def check_speed_options(
    runtime: RuntimeConfig, *, device: torch.device, dtype: torch.dtype, head_dim: int
) -> SpeedPlan:
    """Every single-device refusal of the speed options, without touching a model (callers run it before loading)."""
    return SpeedPlan(
        kernel=select_attention_kernel(runtime.attention_kernel, probe_environment(device, dtype, head_dim)),
        compile=compile_allowed(runtime.compile, device_type=device.type),
        cuda_graphs=cuda_graphs_allowed(runtime.cuda_graphs, device_type=device.type),
    )


def kernel_note(choice: KernelChoice) -> str:
    """The log line for a kernel choice."""
    fallbacks = f" (torch may fall back to {', '.join(choice.sdpa_fallbacks)})" if choice.sdpa_fallbacks else ""
    requested = f"runtime.attention_kernel={choice.requested!r}"
    return f"attention kernel: {choice.kernel} for {requested}, {choice.reason}{fallbacks}"
