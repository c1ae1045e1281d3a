"""Broadcast named tensors of known shapes from one rank, without pickling.

Followers allocate from a shape spec and receive. Tensors of one dtype travel packed in a single flat buffer, so
a whole conditioning dict costs one collective per dtype. Bool tensors travel as uint8 (not every backend
reduces or broadcasts bool).
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.distributed as dist

from gen3c_dist.parallel.comm import broadcast
from gen3c_dist.parallel.comm_counter import CommCounter

TensorSpec = Mapping[str, tuple[tuple[int, ...], torch.dtype]]  # name -> (shape, dtype)


def spec_of(tensors: Mapping[str, torch.Tensor]) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    return {name: (tuple(t.shape), t.dtype) for name, t in tensors.items()}


def _check_source(tensors: Mapping[str, torch.Tensor], spec: TensorSpec) -> None:
    if set(tensors) != set(spec):
        raise ValueError(f"broadcast source tensors {sorted(tensors)} do not match the spec names {sorted(spec)}")
    wrong = [
        f"{n}: {tuple(t.shape)} {t.dtype} vs spec {spec[n][0]} {spec[n][1]}"
        for n, t in tensors.items()
        if (tuple(t.shape), t.dtype) != (tuple(spec[n][0]), spec[n][1])
    ]
    if wrong:
        raise ValueError(f"broadcast source tensors differ from the spec: {wrong}")


def broadcast_tensors(
    tensors: Mapping[str, torch.Tensor] | None,
    spec: TensorSpec,
    *,
    group: dist.ProcessGroup | None,
    src: int,
    device: torch.device,
    counter: CommCounter | None = None,
    kind: str = "broadcast",
) -> dict[str, torch.Tensor]:
    """Every group member returns the source's tensors (on ``device``), in ``spec`` order.

    ``src`` is a global rank (e.g. ``layout.replica_lead``); it passes ``tensors``, followers pass ``None``.
    With ``group=None`` (a group of one) the source's tensors come back unchanged. The source records the bytes
    it sends in ``counter`` under ``kind``.
    """
    is_src = group is None or dist.get_rank() == src
    if is_src:
        if tensors is None:
            raise ValueError(f"broadcast source rank {src} passed no tensors")
        _check_source(tensors, spec)
        if group is None:
            return {name: tensors[name].to(device) for name in spec}
    out: dict[str, torch.Tensor] = {}
    by_dtype: dict[torch.dtype, list[str]] = {}
    for name, (_, dtype) in spec.items():
        by_dtype.setdefault(dtype, []).append(name)
    for dtype, names in by_dtype.items():
        wire = torch.uint8 if dtype == torch.bool else dtype
        sizes = [int(torch.Size(spec[n][0]).numel()) for n in names]
        if is_src:
            flat = torch.cat([tensors[n].to(device=device, dtype=wire).reshape(-1) for n in names])
        else:
            flat = torch.empty(sum(sizes), dtype=wire, device=device)
        broadcast(flat, src=src, group=group, counter=counter, is_src=is_src, kind=kind)
        for name, part in zip(names, torch.split(flat, sizes)):
            out[name] = part.view(spec[name][0]).to(dtype)
    return {name: out[name] for name in spec}


def broadcast_int(value: int | None, *, group: dist.ProcessGroup | None, src: int, device: torch.device) -> int:
    """The source's integer on every group member (followers pass ``None``)."""
    spec = {"value": ((1,), torch.int64)}
    source = None if value is None else {"value": torch.tensor([int(value)], dtype=torch.int64)}
    return int(broadcast_tensors(source, spec, group=group, src=src, device=device)["value"].item())
