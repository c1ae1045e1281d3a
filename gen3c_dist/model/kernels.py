"""Attention kernels for the model's seam, and the pure rule that picks one (``runtime.attention_kernel``).

Every kernel computes what :func:`gen3c_dist.model.attention.local_attention` computes: ``softmax(Q K^T / sqrt(D)) V``
with no mask, ``[B, L, H, D]`` in and out (the key length may differ from the query length: a caller that
trims padded keys passes a slice). Kernels, by the name that runs:

    sdpa            torch SDPA with torch's own dispatch: exactly ``local_attention`` (the default off CUDA)
    sdpa_flash      SDPA pinned to its FlashAttention-2 kernel (CUDA sm80+; CPU has a flash kernel too)
    sdpa_cudnn      SDPA pinned to cuDNN fused attention (CUDA sm80+, cuDNN 9)
    sdpa_efficient  SDPA pinned to the memory-efficient (xFormers/CUTLASS) kernel: the only fused one for fp32
    sdpa_math       SDPA's unfused reference (any device, any dtype)
    flash_attn_3    ``flash_attn_interface.flash_attn_func`` (FlashAttention-3, the Hopper build of flash-attn)
    flash_attn_2    ``flash_attn.flash_attn_func`` (FlashAttention-2 package)
    te              ``transformer_engine.pytorch.DotProductAttention`` (its fused cuDNN / flash backends)

The config option ``flash_attn`` means flash_attn_3 where it can run, else flash_attn_2.

Preference of ``auto`` on CUDA (first kernel that the dtype, head size, GPU and installed packages allow):

* Hopper (sm90): flash_attn_3 > sdpa_cudnn > te > flash_attn_2 > sdpa_flash > sdpa_efficient > sdpa_math.
  FlashAttention-3 is written for Hopper (wgmma, TMA, warp specialisation) and is the fastest published
  forward kernel for head 128; cuDNN 9's fused attention is in the same class and ships with torch (recent
  torch prefers it on sm90 itself); TE's fused attention is cuDNN again, behind one more layer. FlashAttention-2
  (package or SDPA) does not use Hopper's tensor-core instructions and reaches roughly half of their speed.
* Blackwell (sm10x): sdpa_cudnn > te > flash_attn_2 > sdpa_flash > ...: cuDNN carries NVIDIA's Blackwell
  kernels (torch prefers it there too); FlashAttention-3 does not run there.
* Ampere / Ada / other sm80+: flash_attn_2 > sdpa_flash > te > sdpa_cudnn > ...: the two FlashAttention-2
  builds are the fastest there; the package is preferred only because it is a newer release of the same kernel.
* Older GPUs, and fp32 anywhere: sdpa_efficient > sdpa_math (every flash-type kernel needs fp16/bf16).

Head size: flash kernels (and TE) take head_dim <= 256, cuDNN <= 128 (<= 256 on sm90/sm10x with cuDNN > 9.22),
all of them a multiple of 8; beyond that ``auto`` falls to sdpa_efficient. When ``auto`` picks an SDPA kernel,
torch may still fall back down the same list if its own runtime checks refuse a shape; an explicit choice is
pinned and fails loudly instead. Off CUDA, ``auto`` is plain ``sdpa``.

Selection is a pure function of a :class:`KernelEnvironment` so tests can feed it any GPU; only
:func:`probe_environment` and :func:`build_attention_kernel` look at the machine.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from gen3c_dist.errors import InputError
from gen3c_dist.model.attention import AttentionOp, local_attention

AUTO = "auto"
SDPA, SDPA_FLASH, SDPA_CUDNN = "sdpa", "sdpa_flash", "sdpa_cudnn"
SDPA_EFFICIENT, SDPA_MATH = "sdpa_efficient", "sdpa_math"
FLASH_ATTN_2, FLASH_ATTN_3, TE = "flash_attn_2", "flash_attn_3", "te"
FLASH_ATTN = "flash_attn"  # config name for "the best FlashAttention package that runs here"

ATTENTION_KERNEL_OPTIONS = (AUTO, SDPA, SDPA_FLASH, SDPA_CUDNN, SDPA_EFFICIENT, SDPA_MATH, FLASH_ATTN, TE)
SDPA_KERNELS = (SDPA, SDPA_FLASH, SDPA_CUDNN, SDPA_EFFICIENT, SDPA_MATH)
# The importable module each package kernel needs (FlashAttention-3 installs ``flash_attn_interface``).
KERNEL_PACKAGES = {FLASH_ATTN_2: "flash_attn", FLASH_ATTN_3: "flash_attn_interface", TE: "transformer_engine"}
_OPTION_KERNELS = {FLASH_ATTN: (FLASH_ATTN_3, FLASH_ATTN_2)}
_FLASH_TYPE = (SDPA_FLASH, SDPA_CUDNN, FLASH_ATTN_2, FLASH_ATTN_3, TE)
_LOW_PRECISION = (torch.float16, torch.bfloat16)

_HOPPER_ORDER = (FLASH_ATTN_3, SDPA_CUDNN, TE, FLASH_ATTN_2, SDPA_FLASH, SDPA_EFFICIENT, SDPA_MATH)
_BLACKWELL_ORDER = (SDPA_CUDNN, TE, FLASH_ATTN_2, SDPA_FLASH, SDPA_EFFICIENT, SDPA_MATH)
_AMPERE_ORDER = (FLASH_ATTN_2, SDPA_FLASH, TE, SDPA_CUDNN, SDPA_EFFICIENT, SDPA_MATH)
_PRE_AMPERE_ORDER = (SDPA_EFFICIENT, SDPA_MATH)


@dataclasses.dataclass(frozen=True)
class KernelEnvironment:
    """Everything kernel selection depends on."""

    device_type: str  # "cuda", "cpu", ...
    dtype: torch.dtype  # the model's compute dtype
    head_dim: int
    capability: Optional[tuple[int, int]] = None  # CUDA compute capability; None off CUDA
    packages: frozenset[str] = frozenset()  # importable modules out of KERNEL_PACKAGES' values
    cudnn_version: Optional[int] = None  # torch.backends.cudnn.version(), e.g. 90100 for 9.1.0

    def describe(self) -> str:
        gpu = f" sm{self.capability[0]}{self.capability[1]}" if self.capability else ""
        return f"{self.device_type}{gpu} {str(self.dtype).removeprefix('torch.')} head_dim {self.head_dim}"


@dataclasses.dataclass(frozen=True)
class KernelChoice:
    kernel: str  # the kernel that runs (a name from the module docstring)
    requested: str  # the runtime.attention_kernel option
    reason: str
    # SDPA backends torch may fall back to, in order, when its runtime checks refuse ``kernel`` (auto only).
    sdpa_fallbacks: tuple[str, ...] = ()


def _cudnn_head_limit(env: KernelEnvironment) -> int:
    # torch's check_cudnn_tensor_shapes: 256 on sm90 / sm10x with cuDNN > 9.22, otherwise 128.
    cc = env.capability or (0, 0)
    if (cc == (9, 0) or cc[0] == 10) and (env.cudnn_version or 0) > 92200:
        return 256
    return 128


def unsupported_reason(kernel: str, env: KernelEnvironment) -> Optional[str]:
    """Why ``kernel`` cannot run in ``env``, or None when it can."""
    if kernel in (SDPA, SDPA_MATH):
        return None
    if env.device_type != "cuda":
        if env.device_type == "cpu" and kernel == SDPA_FLASH:
            return None  # torch has a CPU flash kernel (any dtype, any head size)
        return f"needs a CUDA device (the model runs on {env.device_type})"
    package = KERNEL_PACKAGES.get(kernel)
    if package is not None and package not in env.packages:
        return f"needs the {package!r} package, which is not importable here"
    cc = env.capability or (0, 0)
    if kernel == SDPA_EFFICIENT:
        if cc < (5, 0):
            return f"needs sm50 or newer (got sm{cc[0]}{cc[1]})"
        if env.dtype == torch.bfloat16 and cc < (8, 0):
            return "runs bfloat16 only on sm80 or newer"
        alignment = 8 if env.dtype in _LOW_PRECISION else 4
        return None if env.head_dim % alignment == 0 else f"needs head_dim divisible by {alignment}"
    if env.dtype not in _LOW_PRECISION:
        return f"needs float16 or bfloat16 (the model runs in {env.dtype})"
    if cc < (8, 0):
        return f"needs sm80 or newer (got sm{cc[0]}{cc[1]})"
    if kernel == FLASH_ATTN_3 and cc != (9, 0):
        return f"runs on Hopper (sm90) only (got sm{cc[0]}{cc[1]})"
    if kernel == SDPA_CUDNN and (env.cudnn_version or 0) < 90000:
        return f"needs cuDNN 9 or newer (torch has {env.cudnn_version})"
    limit = _cudnn_head_limit(env) if kernel == SDPA_CUDNN else 256
    if env.head_dim > limit or env.head_dim % 8:
        return f"needs head_dim <= {limit} and divisible by 8 (got {env.head_dim})"
    return None


def auto_preference(env: KernelEnvironment) -> tuple[str, ...]:
    """The ``auto`` order for this environment, before support is checked (see the module docstring)."""
    if env.device_type != "cuda":
        return (SDPA,)
    cc = env.capability or (0, 0)
    if cc == (9, 0):
        return _HOPPER_ORDER
    if cc[0] == 10:
        return _BLACKWELL_ORDER
    return _AMPERE_ORDER if cc >= (8, 0) else _PRE_AMPERE_ORDER


def select_attention_kernel(requested: str, env: KernelEnvironment) -> KernelChoice:
    """The kernel for ``runtime.attention_kernel=requested``; ValueError when it is unknown or cannot run."""
    if requested not in ATTENTION_KERNEL_OPTIONS:
        raise InputError(f"runtime.attention_kernel={requested!r} is unknown; choose one of {ATTENTION_KERNEL_OPTIONS}")
    if requested == AUTO:
        usable = [k for k in auto_preference(env) if unsupported_reason(k, env) is None]
        kernel = usable[0]  # sdpa / sdpa_math always qualify
        fallbacks = tuple(k for k in usable[1:] if k in SDPA_KERNELS) if kernel in SDPA_KERNELS else ()
        order = " > ".join(auto_preference(env))
        return KernelChoice(kernel, requested, f"auto on {env.describe()}: first usable of {order}", fallbacks)
    candidates = _OPTION_KERNELS.get(requested, (requested,))
    reasons = {k: unsupported_reason(k, env) for k in candidates}
    for kernel in candidates:
        if reasons[kernel] is None:
            return KernelChoice(kernel, requested, f"requested on {env.describe()}")
    why = "; ".join(f"{k} {reason}" for k, reason in reasons.items())
    raise InputError(
        f"runtime.attention_kernel={requested!r} cannot run on {env.describe()}: {why}. Use 'auto' or another kernel"
    )


# ---- the machine ------------------------------------------------------------------------------------------
def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except (ImportError, OSError, RuntimeError):  # absent, or a build that does not load (CUDA/ABI mismatch)
        return False
    return True


def probe_environment(device: torch.device, dtype: torch.dtype, head_dim: int) -> KernelEnvironment:
    """The real environment; packages are probed (imported) only on CUDA, where they can matter."""
    if device.type != "cuda":
        return KernelEnvironment(device.type, dtype, head_dim)
    packages = frozenset(m for m in KERNEL_PACKAGES.values() if _importable(m))
    return KernelEnvironment(
        "cuda", dtype, head_dim, capability=torch.cuda.get_device_capability(device), packages=packages,
        cudnn_version=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
    )


_SDPA_BACKENDS = {SDPA_FLASH: SDPBackend.FLASH_ATTENTION, SDPA_CUDNN: SDPBackend.CUDNN_ATTENTION,
                  SDPA_EFFICIENT: SDPBackend.EFFICIENT_ATTENTION, SDPA_MATH: SDPBackend.MATH}


def _sdpa_pinned(kernels: tuple[str, ...]) -> AttentionOp:
    """SDPA limited to ``kernels``, tried in that order: ``sdpa_kernel(backends, set_priority=True)`` enables just
    those backends and makes the list torch's priority order, so the first that accepts a shape runs (the
    default ``set_priority=False`` would keep torch's own order among them).
    """
    backends = [_SDPA_BACKENDS[k] for k in kernels]
    # cuDNN accepts only the transposed view of a contiguous [B, L, H, D]; a trimmed key slice is not one.
    dense = SDPA_CUDNN in kernels

    def attention(q_BLHD: torch.Tensor, k_BLHD: torch.Tensor, v_BLHD: torch.Tensor) -> torch.Tensor:
        if dense:
            q_BLHD, k_BLHD, v_BLHD = q_BLHD.contiguous(), k_BLHD.contiguous(), v_BLHD.contiguous()
        with sdpa_kernel(backends, set_priority=True):
            q, k, v = (t.transpose(1, 2) for t in (q_BLHD, k_BLHD, v_BLHD))  # SDPA takes [B, H, L, D]
            o_BHLD = F.scaled_dot_product_attention(q, k, v)
        return o_BHLD.transpose(1, 2)

    return attention


def _flash_attn(module: str) -> AttentionOp:
    flash_attn_func = importlib.import_module(module).flash_attn_func

    def attention(q_BLHD: torch.Tensor, k_BLHD: torch.Tensor, v_BLHD: torch.Tensor) -> torch.Tensor:
        out = flash_attn_func(q_BLHD, k_BLHD, v_BLHD, softmax_scale=q_BLHD.shape[-1] ** -0.5, causal=False)
        return out[0] if isinstance(out, tuple) else out  # FlashAttention-3 betas returned (out, lse)

    return attention


class TransformerEngineAttention:
    """TE ``DotProductAttention`` in ``bshd`` layout; one module per (heads, head_dim) seen (a caller may hold a
    subset of the heads)."""

    def __init__(self) -> None:
        import transformer_engine.pytorch as te

        self._te = te
        self._modules: dict[tuple[int, int], Callable[..., torch.Tensor]] = {}

    def __call__(self, q_BLHD: torch.Tensor, k_BLHD: torch.Tensor, v_BLHD: torch.Tensor) -> torch.Tensor:
        B, L, H, D = q_BLHD.shape
        module = self._modules.get((H, D))
        if module is None:  # softmax scale defaults to 1/sqrt(kv_channels)
            module = self._te.DotProductAttention(
                H, D, attention_dropout=0.0, qkv_format="bshd", attn_mask_type="no_mask"
            )
            self._modules[(H, D)] = module
        o_BLX = module(q_BLHD.contiguous(), k_BLHD.contiguous(), v_BLHD.contiguous())  # [B, L, H * D]
        return o_BLX.view(B, L, H, D)


def build_attention_kernel(choice: KernelChoice) -> AttentionOp:
    """The callable for a choice; imports the package it needs here, not before."""
    kernel = choice.kernel
    if kernel == SDPA:
        return local_attention
    if kernel in SDPA_KERNELS:
        return _sdpa_pinned((kernel, *choice.sdpa_fallbacks))
    if kernel in (FLASH_ATTN_2, FLASH_ATTN_3):
        return _flash_attn(KERNEL_PACKAGES[kernel])
    if kernel == TE:
        return TransformerEngineAttention()
    raise ValueError(f"attention kernel {kernel!r} is unknown")
