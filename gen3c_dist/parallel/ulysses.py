"""Ulysses all-to-alls: sequence shards <-> head shards, with Q, K and V packed into ONE collective.

Before attention each of the ``u`` ranks of a Ulysses group holds ``l`` consecutive tokens with all ``H`` heads;
after the forward all-to-all it holds all ``u * l`` tokens of the group with ``H / u`` heads. The backward
all-to-all returns the attention output to the sequence layout. Per layer a rank sends
``4 * B * l * D * (u - 1) / u`` elements: 3 for Q/K/V, 1 for the output.
"""

from __future__ import annotations

import einops
import torch
import torch.distributed as dist

from gen3c_dist.parallel.comm import all_to_all
from gen3c_dist.parallel.comm_counter import CommCounter


def sequence_to_heads(
    q_BlHD: torch.Tensor,
    k_BlHD: torch.Tensor,
    v_BlHD: torch.Tensor,
    *,
    group: dist.ProcessGroup,
    degree: int,
    counter: CommCounter | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[B, l, H, Dh] x3 -> [B, u*l, H/u, Dh] x3 (this rank's head group, the Ulysses group's whole sequence)."""
    qkv_3BlHD = torch.stack([q_BlHD, k_BlHD, v_BlHD])
    # Destination rank j gets head group j (heads split as (u h), u outermost).
    send_U3BlhD = einops.rearrange(qkv_3BlHD, "k b l (u h) d -> u k b l h d", u=degree).contiguous()
    recv_U3BlhD = all_to_all(send_U3BlhD, group=group, counter=counter)  # recv[i] = sequence chunk i
    qkv_3BLhD = einops.rearrange(recv_U3BlhD, "u k b l h d -> k b (u l) h d")
    return qkv_3BLhD[0], qkv_3BLhD[1], qkv_3BLhD[2]


def heads_to_sequence(
    o_BLhD: torch.Tensor, *, group: dist.ProcessGroup, degree: int, counter: CommCounter | None
) -> torch.Tensor:
    """[B, u*l, H/u, Dh] -> [B, l, H, Dh]: every rank gets back its own tokens with all heads."""
    send_UBlhD = einops.rearrange(o_BLhD, "b (u l) h d -> u b l h d", u=degree).contiguous()  # send[i] = chunk i
    recv_UBlhD = all_to_all(send_UBlhD, group=group, counter=counter)  # recv[j] = head group j
    return einops.rearrange(recv_UBlhD, "u b l h d -> b l (u h) d")
