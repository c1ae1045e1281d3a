"""``parallel.layout=auto``: choose data x cfg x ulysses x ring from what the run knows before any weights load.

Inputs: the world size, the ranks per node, the head count, whether both guidance passes run, and the chunk
count of every video still to make. Degrees the user set are kept; the rest are chosen.

Inside one replica (the ranks that make one video together) the rules are fixed, because they follow from how
the traffic scales, not from a fit:

* cfg = 2 whenever both guidance passes run and the replica has an even size: the two passes then exchange one
  latent-sized output per step, a few MB, against the all-to-alls or ring passes of context parallelism.
* Ulysses takes the largest degree that divides the context-parallel size and the head count and tiles a node
  (it divides the ranks per node), so its all-to-alls stay on NVLink; the ring takes what is left, across
  nodes, where its K/V passing hides under the attention it feeds.

Across replicas the choice is a cost comparison: for every replica count ``d`` that divides the world (never
more replicas than videos, so one video gets every rank), the projected makespan is the busiest replica's
chunks (videos go round-robin) times the projected seconds per chunk of a replica of ``world / d`` ranks,
from :func:`gen3c_dist.perf.projection.chunk_seconds`, the model behind ``benchmarks/projection.py``. The
shortest makespan wins; a tie goes to fewer replicas (each video finishes sooner).

Everything here is pure: every rank computing it from the same inputs gets the same answer (the runner still
computes it once, on rank 0, and shares it, so a GPU-name lookup cannot differ between ranks).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

from gen3c_dist.config import AttentionBackend, LayoutMode, ParallelConfig
from gen3c_dist.errors import InputError
from gen3c_dist.parallel.layout import ParallelLayout, explicit_config, plan_layout

ChunkCost = Callable[[ParallelLayout], float]  # projected seconds per chunk for one replica laid out so


@dataclasses.dataclass(frozen=True)
class LayoutRequest:
    world_size: int
    ranks_per_node: int
    num_heads: int
    guidance_runs_both: bool
    video_chunks: tuple[int, ...]  # chunks of every video still to make, in batch order


@dataclasses.dataclass(frozen=True)
class Alternative:
    """One candidate layout with its projected cost."""

    data: int
    cfg: int
    ulysses: int
    ring: int
    chunk_s: float  # projected seconds per chunk for one replica
    makespan_s: float  # projected seconds until the busiest replica is done
    chosen: bool = False

    def degrees(self) -> dict[str, int]:
        return {"data": self.data, "cfg": self.cfg, "ulysses": self.ulysses, "ring": self.ring}

    def describe(self) -> str:
        return f"data {self.data} x cfg {self.cfg} x ulysses {self.ulysses} x ring {self.ring}"


@dataclasses.dataclass(frozen=True)
class LayoutChoice:
    config: ParallelConfig  # every degree set
    reason: str  # one sentence for the start-up log and the record
    alternatives: tuple[Alternative, ...] = ()


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _cfg_degrees(replica_size: int, fixed: ParallelConfig, request: LayoutRequest) -> list[int]:
    """cfg degrees to try, preferred first: 2 when both passes run (1 if the other set degrees leave no room)."""
    if fixed.cfg is not None:
        return [fixed.cfg] if replica_size % fixed.cfg == 0 else []
    return [2, 1] if request.guidance_runs_both and replica_size % 2 == 0 else [1]


def _ulysses_degree(cp: int, fixed: ParallelConfig, request: LayoutRequest) -> Optional[int]:
    if fixed.ulysses is not None:
        return fixed.ulysses if cp % fixed.ulysses == 0 else None
    if fixed.ring is not None:
        return cp // fixed.ring if cp % fixed.ring == 0 else None
    if fixed.attention == AttentionBackend.ring:
        return 1
    if fixed.attention == AttentionBackend.deepspeed:
        return cp  # DeepSpeed is Ulysses only; plan_layout refuses it if the heads do not allow cp
    fits = [u for u in _divisors(cp) if request.num_heads % u == 0 and request.ranks_per_node % u == 0]
    return max(fits) if fits else 1


def replica_degrees(replica_size: int, fixed: ParallelConfig, request: LayoutRequest) -> Optional[dict[str, int]]:
    """cfg / ulysses / ring for a replica of ``replica_size`` ranks by the rules above, or None if none fits."""
    for cfg in _cfg_degrees(replica_size, fixed, request):
        cp = replica_size // cfg
        ulysses = _ulysses_degree(cp, fixed, request)
        if ulysses is None or cp % ulysses or (fixed.ring is not None and cp // ulysses != fixed.ring):
            continue
        return {"cfg": cfg, "ulysses": ulysses, "ring": cp // ulysses}
    return None


def makespan_chunks(video_chunks: tuple[int, ...], replicas: int) -> int:
    """Chunks of the busiest replica when videos are dealt round-robin (the runner's assignment)."""
    if not video_chunks:
        return 0
    return max(sum(video_chunks[r::replicas]) for r in range(replicas))


def _candidate(data: int, fixed: ParallelConfig, request: LayoutRequest, chunk_cost: ChunkCost) -> Optional[Alternative]:
    degrees = replica_degrees(request.world_size // data, fixed, request)
    if degrees is None:
        return None
    config = dataclasses.replace(fixed, layout=LayoutMode.explicit, data=data, **degrees)
    try:
        layout = plan_layout(config, world_size=request.world_size, rank=0, num_heads=request.num_heads,
                             guidance_runs_both=request.guidance_runs_both)
    except ValueError:
        return None
    if layout.note and fixed.ulysses is None:
        return None  # a Ulysses degree we derived would be re-factored: that is another candidate's layout
    chunk_s = chunk_cost(layout)
    makespan = makespan_chunks(request.video_chunks, data) * chunk_s
    return Alternative(data=data, **degrees, chunk_s=chunk_s, makespan_s=makespan)


def choose_layout(config: ParallelConfig, request: LayoutRequest, chunk_cost: ChunkCost) -> LayoutChoice:
    """The layout to run; ``InputError`` (from plan_layout's checks) when the set degrees cannot fit the world."""
    if config.layout == LayoutMode.explicit:
        return LayoutChoice(explicit_config(config), "parallel.layout=explicit: the degrees as given")
    if request.world_size < 1 or request.ranks_per_node < 1:
        raise InputError(f"world size {request.world_size} and ranks per node {request.ranks_per_node} must be >= 1")
    videos = max(1, len(request.video_chunks))
    replica_counts = [config.data] if config.data else [d for d in _divisors(request.world_size) if d <= videos]
    found = [c for c in (_candidate(d, config, request, chunk_cost) for d in replica_counts
                         if request.world_size % d == 0) if c is not None]
    if not found:
        # Nothing fits the degrees that were set: plan_layout's own message says which and why.
        fallback = explicit_config(config)
        layout = plan_layout(fallback, world_size=request.world_size, rank=0, num_heads=request.num_heads,
                             guidance_runs_both=request.guidance_runs_both)
        return LayoutChoice(dataclasses.replace(fallback, data=layout.data),
                            "parallel.layout=auto found no other layout around the degrees as given")
    best = min(found, key=lambda c: (c.makespan_s, c.data))
    alternatives = tuple(dataclasses.replace(c, chosen=c is best) for c in found)
    chosen = dataclasses.replace(config, layout=LayoutMode.explicit, **best.degrees())
    return LayoutChoice(chosen, _reason(best, config, request, len(found)), alternatives)


def _reason(best: Alternative, config: ParallelConfig, request: LayoutRequest, candidates: int) -> str:
    videos = len(request.video_chunks)
    parts = []
    if best.data == 1:
        parts.append(f"{videos or 1} video{'s' if videos > 1 else ''}: every rank works on each")
    else:
        parts.append(f"{videos} videos: {best.data} replicas of {request.world_size // best.data} ranks gave the "
                     f"shortest projected makespan of {candidates} candidates")
    if config.cfg is None:
        replica = request.world_size // best.data
        parts.append("cfg 2: both guidance passes run" if best.cfg == 2 else
                     "cfg 1: " + ("one guidance pass" if not request.guidance_runs_both else
                                  f"a replica of {replica} rank{'s' if replica > 1 else ''} does not split in two"))
    if config.ulysses is None and best.ulysses * best.ring > 1:
        parts.append(f"ulysses {best.ulysses}: the largest that divides {request.num_heads} heads and tiles a node of "
                     f"{request.ranks_per_node}" + (f"; ring {best.ring} for the rest" if best.ring > 1 else ""))
    set_by_user = [f"{k}={getattr(config, k)}" for k in ("data", "cfg", "ulysses", "ring") if getattr(config, k)]
    if set_by_user:
        parts.append("kept as set: " + ", ".join(set_by_user))
    return "; ".join(parts)
