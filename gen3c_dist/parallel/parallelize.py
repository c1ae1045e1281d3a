"""``parallelize_dit``: the one place where the DiT forward gets its kernel, its compile and context parallelism.

The model package is a single-device network with one seam, the self-attention op; this module decides what
goes behind the seam and around the network. The steps follow torchtitan's ``parallelize_*`` functions (one
``apply_*`` step per technique; steps that change the blocks come before ``torch.compile``, which compiles each
block in place, and the wrapper around the whole network comes last):

1. kernel selection: the single-device attention kernel (:mod:`gen3c_dist.model.kernels`), also the local
   attention inside the distributed op;
2. compile: every ``TransformerBlock`` in place. With CP the seam is an
   :class:`~gen3c_dist.model.acceleration.OpaqueSeam`, so the Ulysses / ring collectives, the comm counter and
   the fault timeouts run eagerly between two compiled graphs;
3. context parallelism: :func:`~gen3c_dist.parallel.cp_forward.make_cp_forward` wraps the network (token shard
   in, distributed attention op behind the seam, gather out). On one device this step is the plain forward
   instead, which CUDA graphs may then capture (refused with CP > 1: a graph replays the GPU work and skips the
   host side of the collectives).

Every refusal is raised by :func:`check_speed_options` before the model is touched; the runner calls it on
every rank before loading the weights.
"""

from __future__ import annotations

from typing import Optional

import torch

from gen3c_dist.config import RuntimeConfig
from gen3c_dist.errors import InputError
from gen3c_dist.model import acceleration
from gen3c_dist.model.acceleration import CudaGraphForward, ForwardFn, OpaqueSeam, SpeedPlan, bind_forward
from gen3c_dist.model.attention import AttentionOp
from gen3c_dist.model.dit import GEN3CDiT
from gen3c_dist.model.kernels import build_attention_kernel
from gen3c_dist.parallel.comm_counter import CommCounter
from gen3c_dist.parallel.cp_forward import make_cp_forward
from gen3c_dist.parallel.layout import ParallelLayout


def check_speed_options(
    runtime: RuntimeConfig, *, device: torch.device, dtype: torch.dtype, head_dim: int, cp_size: int
) -> SpeedPlan:
    """The single-device refusals (:func:`gen3c_dist.model.acceleration.check_speed_options`) and CP's own."""
    if cp_size < 1:
        raise ValueError(f"context-parallel degree {cp_size} must be >= 1")
    plan = acceleration.check_speed_options(runtime, device=device, dtype=dtype, head_dim=head_dim)
    if plan.cuda_graphs and cp_size > 1:
        raise InputError(
            f"runtime.cuda_graphs=true needs a single-device forward, but the context-parallel degree is {cp_size}: "
            "a graph would replay the GPU work and skip the host side of the collectives (gloo, comm counter, "
            "fault timeouts). Set runtime.cuda_graphs=false, or use cfg / data parallelism only"
        )
    return plan


def parallelize_dit(
    model: GEN3CDiT,
    layout: ParallelLayout,
    runtime: RuntimeConfig,
    *,
    device: torch.device,
    dtype: torch.dtype,
    counter: Optional[CommCounter] = None,
) -> tuple[ForwardFn, list[str]]:
    """This rank's DiT forward for ``layout`` with the runtime's speed options, and one log note per decision.

    ``counter`` counts the CP traffic. Compiling changes ``model``'s blocks in place.
    """
    plan = check_speed_options(runtime, device=device, dtype=dtype, head_dim=model.cfg.head_dim, cp_size=layout.cp)
    kernel = build_attention_kernel(plan.kernel)
    notes = [acceleration.kernel_note(plan.kernel)]
    seam = apply_compile(model, plan, cp_size=layout.cp, notes=notes)
    if layout.cp > 1:
        forward = make_cp_forward(model, layout, counter=counter, local_attn=kernel,
                                  wrap_attention=seam.bind if seam else None)
        return forward, notes
    return single_device_forward(model, kernel, seam=seam, cuda_graphs=plan.cuda_graphs, device=device, notes=notes)


def apply_compile(model: GEN3CDiT, plan: SpeedPlan, *, cp_size: int, notes: list[str]) -> Optional[OpaqueSeam]:
    """Compile the blocks if the plan says so; returns the seam to bind the attention op through (None: traced)."""
    if not plan.compile:
        return None
    traced = cp_size == 1 and acceleration.seam_traceable(plan.kernel.kernel)
    count = acceleration.compile_blocks(model)
    attention = "traced" if traced else "kept eager (graph break)"
    notes.append(f"torch.compile: {count} blocks in place, attention {attention}")
    return None if traced else OpaqueSeam()


def single_device_forward(
    model: GEN3CDiT, kernel: AttentionOp, *, seam: Optional[OpaqueSeam], cuda_graphs: bool, device: torch.device,
    notes: list[str],
) -> tuple[ForwardFn, list[str]]:
    forward = bind_forward(model, seam.bind(kernel) if seam else kernel)
    if cuda_graphs:
        forward = CudaGraphForward(forward, device=device)
        notes.append("CUDA graphs: the forward is captured at its first call per input shape and replayed")
    return forward, notes
