"""Per-rank figures for the JSON record: peak memory and DiT communication per denoising step.

The lead writes the record, but memory and traffic differ per rank (the lead holds the conditioning models, a
ring rank sends more than a Ulysses rank), so every rank of the replica contributes its own line through one
``all_gather_object`` on the replica group, called by every replica rank after each video.
"""

from __future__ import annotations

import resource
import sys
from typing import Optional

import torch

from gen3c_dist.parallel.comm_counter import CommCounter


def peak_memory_bytes(device: torch.device) -> int:
    """CUDA: the allocator's peak on this device. CPU: the process's peak resident set size."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB on Linux


def rank_line(rank: int, device: torch.device, counter: Optional[CommCounter], steps: int) -> dict:
    return {
        "rank": rank,
        "peak_memory_bytes": peak_memory_bytes(device),
        "comm_bytes_per_step": {} if counter is None else counter.mean_per_step(steps),
    }


def gather_rank_lines(line: dict, *, group, size: int) -> list[dict]:
    """Every replica rank's line, in replica order (a single process returns its own)."""
    if group is None or size == 1:
        return [line]
    import torch.distributed as dist

    lines: list[Optional[dict]] = [None] * size
    dist.all_gather_object(lines, line, group=group)
    return [entry for entry in lines if entry is not None]

