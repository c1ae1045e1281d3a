"""The process groups of a :class:`ParallelLayout`, from one ``DeviceMesh`` over [data, cfg, ring, ulysses].

``init_device_mesh`` creates every dimension's groups (collectively, on every rank); ``replica`` (cfg x ring x
ulysses) and ``cp`` (ring x ulysses) are flattened dimensions of it. The mesh's rank grid is the layout's own
(:meth:`ParallelLayout.ranks_along`), so the groups hold exactly the layout's rank sets.

Two conventions the rest of the package relies on:

* a group of one rank is ``None`` here ("no communication on this axis"), and a single process has no mesh;
* every group carries ``timeout_s``: a torch subgroup does not inherit the default group's timeout, so it is
  passed through the mesh's per-dimension backend options.
"""

from __future__ import annotations

import dataclasses
import datetime

import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from gen3c_dist.parallel.layout import GROUP_DIMS, MESH_DIMS, ParallelLayout


@dataclasses.dataclass(frozen=True)
class ProcessGroups:
    """This rank's groups; ``None`` where the group would hold only this rank."""

    replica: dist.ProcessGroup | None
    cp: dist.ProcessGroup | None
    cfg: dist.ProcessGroup | None
    ulysses: dist.ProcessGroup | None
    ring: dist.ProcessGroup | None
    mesh: DeviceMesh | None = None


def _options(backend: str, timeout_s: float):
    """(backend, options carrying the timeout) for NCCL and gloo; None for others (the dry run's fake backend)."""
    if backend == "nccl":
        options = dist.ProcessGroupNCCL.Options()
    elif backend == "gloo":
        options = dist.ProcessGroupGloo._Options()
    else:
        return None
    options._timeout = datetime.timedelta(seconds=timeout_s)
    return backend, options


def build_mesh(layout: ParallelLayout, *, timeout_s: float) -> tuple[DeviceMesh, dict[str, DeviceMesh]]:
    """The [data, cfg, ring, ulysses] device mesh, and the flattened ``replica`` and ``cp`` meshes over it."""
    backend = dist.get_backend()
    override = _options(backend, timeout_s)
    device_type = "cuda" if backend == "nccl" else "cpu"
    mesh = init_device_mesh(device_type, layout.mesh_shape, mesh_dim_names=MESH_DIMS,
                            backend_override=None if override is None else {name: override for name in MESH_DIMS})
    # _flatten is the private spelling of torch's flattened dims, as torchtitan uses it (no public API yet); the
    # flattened meshes are kept here, since slicing them back out of the root mesh is deprecated.
    flat = {name: mesh[GROUP_DIMS[name]]._flatten(name, backend_override=override) for name in ("replica", "cp")}
    return mesh, flat


def attach_process_groups(layout: ParallelLayout, *, timeout_s: float) -> ParallelLayout:
    """``layout`` with its :class:`ProcessGroups` attached (all ``None`` for a single process). Collective."""
    if layout.world_size == 1:
        return dataclasses.replace(layout, groups=ProcessGroups(None, None, None, None, None))
    if not dist.is_initialized():
        raise ValueError(f"layout for world size {layout.world_size} needs an initialised process group")
    mesh, flat = build_mesh(layout, timeout_s=timeout_s)

    def group(name: str) -> dist.ProcessGroup | None:
        if len(layout.ranks_along(GROUP_DIMS[name])) == 1:
            return None
        return (flat[name] if name in flat else mesh[name]).get_group()

    groups = ProcessGroups(**{name: group(name) for name in GROUP_DIMS}, mesh=mesh)
    return dataclasses.replace(layout, groups=groups)
