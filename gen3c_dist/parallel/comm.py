"""The collectives the context-parallel code uses, each recording its bytes in an optional :class:`CommCounter`.

All take the group's tensors with the group index as the leading dim, so callers never reason about splits.
Peers of point-to-point ops are global ranks (valid for every torch version the project supports).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist

from gen3c_dist.parallel.comm_counter import CommCounter


def _nbytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


def all_to_all(send_N: torch.Tensor, *, group: dist.ProcessGroup, counter: CommCounter | None) -> torch.Tensor:
    """``recv[i] = send_on_rank_i[me]`` along dim 0 (size = group size). ``send_N`` must be contiguous."""
    n = send_N.shape[0]
    recv_N = torch.empty_like(send_N)
    dist.all_to_all_single(recv_N, send_N, group=group)
    if counter is not None:
        counter.add("all_to_all", _nbytes(send_N) * (n - 1) // n)
    return recv_N


def all_gather(
    tensor: torch.Tensor, *, group: dist.ProcessGroup, counter: CommCounter | None, kind: str = "all_gather"
) -> torch.Tensor:
    """``[n, *tensor.shape]`` holding every group member's tensor in group-rank order."""
    n = dist.get_world_size(group)
    # Gloo wants the output as the concatenation along dim 0; viewed as [n, *shape] afterwards.
    out = torch.empty((n * tensor.shape[0], *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
    gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor  # older torch
    gather_single(out, tensor.contiguous(), group=group)
    if counter is not None:
        counter.add(kind, _nbytes(tensor) * (n - 1))
    return out.view(n, *tensor.shape)


def group_ranks(group: dist.ProcessGroup | None, lone_rank: int) -> tuple[int, ...]:
    """Global ranks of ``group`` in group order; ``(lone_rank,)`` for ``None`` (a group of one)."""
    return (lone_rank,) if group is None else tuple(dist.get_process_group_ranks(group))


Transfer = tuple[torch.Tensor, int, int]  # (tensor, global peer rank, tag)


def exchange(sends: Sequence[Transfer], recvs: Sequence[Transfer], *, group: dist.ProcessGroup | None,
             wait: bool = True, counter: CommCounter | None = None, kind: str = "p2p") -> list:
    """Post every send and receive as one batch; returns the works when ``wait`` is False.

    Tags keep several messages between the same pair apart (gloo matches by tag; NCCL ignores tags and matches in
    posting order, which the callers keep identical on both sides). The sent bytes go to ``counter`` under ``kind``.
    """
    if counter is not None and sends:
        counter.add(kind, sum(_nbytes(t) for t, _, _ in sends))
    ops = [dist.P2POp(dist.isend, t.contiguous(), peer, group, tag) for t, peer, tag in sends]
    ops += [dist.P2POp(dist.irecv, t, peer, group, tag) for t, peer, tag in recvs]
    works = dist.batch_isend_irecv(ops) if ops else []
    if wait:
        for work in works:
            work.wait()
        return []
    return works


def start_ring_exchange(
    send: torch.Tensor,
    recv: torch.Tensor,
    *,
    send_to: int,
    recv_from: int,
    group: dist.ProcessGroup,
    counter: CommCounter | None,
) -> list[dist.Work]:
    """Post one isend and one irecv (global ranks) as a batch; the caller overlaps work and then waits."""
    return exchange([(send, send_to, 0)], [(recv, recv_from, 0)], group=group, wait=False, counter=counter,
                    kind="ring_p2p")


def broadcast(
    tensor: torch.Tensor, *, src: int, group: dist.ProcessGroup, counter: CommCounter | None, is_src: bool,
    kind: str = "broadcast",
) -> None:
    """In-place broadcast from global rank ``src``; only the source counts the bytes (once per receiver)."""
    dist.broadcast(tensor, src=src, group=group)
    if counter is not None and is_src:
        counter.add(kind, _nbytes(tensor) * (dist.get_world_size(group) - 1))
