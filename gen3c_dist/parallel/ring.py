"""Ring attention: K/V blocks circulate around the ring while the local block's attention runs.

Each of the ``r`` ranks keeps its queries and starts with its own K/V block (one packed ``[2, B, S, H, Dh]``
buffer, so one send per step). At step ``s`` it posts the isend of the block it holds to the next rank and the
irecv of the next block from the previous rank, computes attention on the block it holds meanwhile, then waits.
After ``r`` steps every query has seen every block; partials merge by log-sum-exp in fp32. A block knows its
global key offset from its ring position, so padded keys (global position >= real token count) are cut off
before the block attention and never reach a softmax.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from gen3c_dist.parallel.comm import start_ring_exchange
from gen3c_dist.parallel.comm_counter import CommCounter
from gen3c_dist.parallel.lse_attention import LseAccumulator, attention_with_lse


def ring_attention(
    q_BSHD: torch.Tensor,
    k_BSHD: torch.Tensor,
    v_BSHD: torch.Tensor,
    *,
    group: dist.ProcessGroup,
    ranks: tuple[int, ...],
    position: int,
    real_tokens: int,
    counter: CommCounter | None,
) -> torch.Tensor:
    """Attention of local queries against the keys of every ring member -> ``[B, S, H, Dh]``.

    ``ranks`` are the ring's global ranks in ring order, ``position`` this rank's index in it, and block ``p``
    covers global key positions ``[p * S, (p + 1) * S)`` (the ring spans the whole sequence); keys at or beyond
    ``real_tokens`` are padding.
    """
    r, S = len(ranks), k_BSHD.shape[1]
    current_2BSHD = torch.stack([k_BSHD, v_BSHD])
    incoming_2BSHD = torch.empty_like(current_2BSHD)
    acc = LseAccumulator()
    for step in range(r):
        pending = []
        if step < r - 1:
            pending = start_ring_exchange(
                current_2BSHD, incoming_2BSHD, send_to=ranks[(position + 1) % r],
                recv_from=ranks[(position - 1) % r], group=group, counter=counter,
            )
        owner = (position - step) % r  # ring position whose keys this block holds
        valid = max(0, min(S, real_tokens - owner * S))
        if valid:
            acc.add(*attention_with_lse(q_BSHD, current_2BSHD[0, :, :valid], current_2BSHD[1, :, :valid]))
        for work in pending:
            work.wait()
        # The block just sent is complete (waited on), so its buffer can receive the next one.
        current_2BSHD, incoming_2BSHD = incoming_2BSHD, current_2BSHD
    return acc.result(q_BSHD.dtype)
