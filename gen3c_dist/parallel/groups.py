"""Create the torch process groups a :class:`ParallelLayout` needs and attach them to it.

``dist.new_group`` is collective over the whole world: every rank must create every group in the same order,
including groups it is not a member of. :meth:`ParallelLayout.partitions` lists them identically everywhere.
Groups of one rank are never created (``None`` means "no communication on this axis"), and identical rank sets
(e.g. the CP group and the Ulysses group when ring == 1) share one torch group.
"""

from __future__ import annotations

import dataclasses
import datetime

import torch.distributed as dist

from gen3c_dist.parallel.layout import ParallelLayout

GROUP_KINDS = ("replica", "cp", "cfg", "ulysses", "ring")


@dataclasses.dataclass(frozen=True)
class ProcessGroups:
    """This rank's groups; ``None`` where the group would hold only this rank."""

    replica: dist.ProcessGroup | None
    cp: dist.ProcessGroup | None
    cfg: dist.ProcessGroup | None
    ulysses: dist.ProcessGroup | None
    ring: dist.ProcessGroup | None


def build_process_groups(layout: ParallelLayout, *, timeout_s: float) -> ProcessGroups:
    """Create every group of the world (collective: call on all ranks) and return this rank's ones.

    ``timeout_s`` must be passed: a torch subgroup does not inherit the default group's timeout.
    """
    if layout.world_size == 1:
        return ProcessGroups(None, None, None, None, None)
    if not dist.is_initialized():
        raise ValueError(f"layout for world size {layout.world_size} needs an initialised process group")
    timeout = datetime.timedelta(seconds=timeout_s)
    created: dict[tuple[int, ...], dist.ProcessGroup] = {}
    mine: dict[str, dist.ProcessGroup | None] = {}
    for kind in GROUP_KINDS:
        mine[kind] = None
        for ranks in layout.partitions(kind):
            if len(ranks) == 1:
                continue
            if ranks not in created:
                created[ranks] = dist.new_group(list(ranks), timeout=timeout)
            if layout.rank in ranks:
                mine[kind] = created[ranks]
    return ProcessGroups(**mine)


def attach_process_groups(layout: ParallelLayout, *, timeout_s: float) -> ParallelLayout:
    """``layout`` with its :class:`ProcessGroups` attached (all ``None`` for a single process)."""
    return dataclasses.replace(layout, groups=build_process_groups(layout, timeout_s=timeout_s))
