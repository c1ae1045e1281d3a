"""The rank layout: data-parallel replicas x cfg axis x context-parallel group (Ulysses inside, ring across).

:func:`plan_layout` is a pure function of the config, the world size, the head count and whether guidance runs
both passes, so every rank computes the same layout, or raises the same :class:`gen3c_dist.errors.InputError`, before any weights load.
Process groups are attached afterwards by :func:`gen3c_dist.parallel.mesh.attach_process_groups`, from a
``DeviceMesh`` over the same grid; everything downstream takes the layout as an argument.

Rank numbering: the ranks fill a [data, cfg, ring, ulysses] grid row-major (the device mesh's own order), i.e.
``rank = ((data_index * cfg + cfg_index) * ring + ring_index) * ulysses + ulysses_index``. The CP-local index
``cp_index = ring_index * ulysses + ulysses_index`` is also the index of this rank's token shard, so a Ulysses
group holds consecutive shards and a ring block is the concatenation of one Ulysses group's shards.

Head count: Ulysses splits heads, so its degree must divide ``num_heads``. When it does not and the attention
backend is ``native``, the layout keeps the same CP ranks and re-factors them as ``ulysses = gcd(ulysses,
num_heads)`` with the rest as ring (a note explains it, logged by the caller); the explicit ``ulysses`` and
``deepspeed`` backends raise instead. Re-factoring keeps every rank busy with no padded heads, and the token
sharding does not change, only the attention communication pattern.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
from typing import TYPE_CHECKING, Optional

import torch

from gen3c_dist.config import AttentionBackend, LayoutMode, ParallelConfig
from gen3c_dist.errors import InputError

if TYPE_CHECKING:
    from gen3c_dist.parallel.mesh import ProcessGroups

ATTENTION_BACKENDS = AttentionBackend.names()
# The device mesh's dimensions, outermost first, and the dimensions each process group spans. ``replica`` and
# ``cp`` are flattened mesh dimensions.
MESH_DIMS = ("data", "cfg", "ring", "ulysses")
GROUP_DIMS: dict[str, tuple[str, ...]] = {
    "replica": ("cfg", "ring", "ulysses"), "cp": ("ring", "ulysses"), "cfg": ("cfg",), "ring": ("ring",),
    "ulysses": ("ulysses",),
}


@dataclasses.dataclass(frozen=True)
class ParallelLayout:
    """Who does what. Degrees are the ones attention uses (after any head-count re-factoring)."""

    world_size: int
    rank: int
    data: int
    cfg: int
    ulysses: int
    ring: int
    attention: str
    note: str = ""  # non-empty when the requested Ulysses/ring split was re-factored for the head count
    groups: Optional["ProcessGroups"] = dataclasses.field(default=None, compare=False, repr=False)

    # ---- degrees ----------------------------------------------------------------------------------------
    @property
    def cp(self) -> int:
        return self.ulysses * self.ring

    @property
    def replica_size(self) -> int:
        return self.cfg * self.cp

    # ---- the mesh: ranks in a [data, cfg, ring, ulysses] grid, row-major --------------------------------
    @property
    def mesh_shape(self) -> tuple[int, int, int, int]:
        """The device mesh's shape over :data:`MESH_DIMS`; rank r sits at the row-major position r."""
        return (self.data, self.cfg, self.ring, self.ulysses)

    @property
    def coordinate(self) -> dict[str, int]:
        """This rank's index along each mesh dimension."""
        index, out = self.rank, {}
        for name, size in reversed(list(zip(MESH_DIMS, self.mesh_shape))):
            index, out[name] = divmod(index, size)
        return {name: out[name] for name in MESH_DIMS}

    def ranks_along(self, dims: tuple[str, ...]) -> tuple[int, ...]:
        """The ranks that share this rank's coordinates except along ``dims`` (row-major), i.e. its group over
        those dimensions: what a DeviceMesh sliced (and flattened) over ``dims`` holds on this rank."""
        grid = torch.arange(self.world_size).view(self.mesh_shape)
        where = tuple(slice(None) if name in dims else self.coordinate[name] for name in MESH_DIMS)
        return tuple(int(r) for r in grid[where].reshape(-1))

    @property
    def data_index(self) -> int:
        return self.coordinate["data"]

    @property
    def cfg_index(self) -> int:
        """0 runs the conditional pass, 1 the unconditional one (with cfg == 2)."""
        return self.coordinate["cfg"]

    @property
    def ring_index(self) -> int:
        return self.coordinate["ring"]

    @property
    def ulysses_index(self) -> int:
        return self.coordinate["ulysses"]

    @property
    def cp_index(self) -> int:
        """Index of this rank's token shard: a Ulysses group holds consecutive shards."""
        return self.ring_index * self.ulysses + self.ulysses_index

    @property
    def replica_ranks(self) -> tuple[int, ...]:
        """Every rank working on this rank's sample: the cfg x CP block of one data-parallel replica."""
        return self.ranks_along(GROUP_DIMS["replica"])

    @property
    def cp_ranks(self) -> tuple[int, ...]:
        return self.ranks_along(GROUP_DIMS["cp"])

    @property
    def cfg_ranks(self) -> tuple[int, ...]:
        """The ranks holding the same token shard of the cond and uncond passes (the per-step exchange)."""
        return self.ranks_along(GROUP_DIMS["cfg"])

    @property
    def ulysses_ranks(self) -> tuple[int, ...]:
        return self.ranks_along(GROUP_DIMS["ulysses"])

    @property
    def ring_ranks(self) -> tuple[int, ...]:
        return self.ranks_along(GROUP_DIMS["ring"])

    # ---- leads ------------------------------------------------------------------------------------------
    @property
    def cp_lead(self) -> int:
        """Lowest global rank of the CP group; it holds token shard 0."""
        return self.cp_ranks[0]

    @property
    def replica_lead(self) -> int:
        """Lowest rank of the replica (cfg index 0, CP index 0): it prepares inputs and broadcasts them."""
        return self.replica_ranks[0]

    @property
    def is_replica_lead(self) -> bool:
        """True on exactly one rank per data-parallel replica: the one that writes the output."""
        return self.rank == self.replica_lead

    def describe(self) -> str:
        return (
            f"world {self.world_size} = data {self.data} x cfg {self.cfg} x ulysses {self.ulysses} x ring {self.ring}"
            f" (attention={self.attention})"
        )


def explicit_config(config: ParallelConfig) -> ParallelConfig:
    """``layout=explicit`` semantics: unset cfg / ulysses / ring are 1; an unset (or 0) data is derived."""
    return dataclasses.replace(
        config, layout=LayoutMode.explicit, cfg=1 if config.cfg is None else config.cfg,
        ulysses=1 if config.ulysses is None else config.ulysses, ring=1 if config.ring is None else config.ring,
        data=config.data or 0,
    )


def _check_degrees(config: ParallelConfig, *, world_size: int, num_heads: int) -> None:
    for name in ("ulysses", "ring", "cfg"):
        if getattr(config, name) < 1:
            raise InputError(f"parallel.{name}={getattr(config, name)} is invalid: every degree must be >= 1")
    if config.data < 0:
        raise InputError(f"parallel.data={config.data} is invalid: use >= 1, or leave it unset (null) to derive it")
    if world_size < 1 or num_heads < 1:
        raise InputError(f"world size {world_size} and num_heads {num_heads} must both be >= 1")


def _check_product(config: ParallelConfig, *, world_size: int) -> int:
    """Returns the data-parallel degree."""
    inner = config.cfg * config.ulysses * config.ring
    degrees = f"{config.cfg} x {config.ulysses} x {config.ring}"
    if config.data == 0:
        if world_size % inner:
            raise InputError(
                f"world size {world_size} is not a multiple of parallel cfg x ulysses x ring = {degrees} = {inner}; "
                f"the data-parallel degree is world / (cfg x ulysses x ring), so choose degrees whose product "
                f"divides {world_size}"
            )
        return world_size // inner
    if config.data * inner != world_size:
        raise InputError(
            f"parallel data x cfg x ulysses x ring = {config.data} x {degrees} = {config.data * inner} does not "
            f"equal the world size {world_size}; change the degrees or leave parallel.data unset to derive it"
        )
    return config.data


def _check_attention(config: ParallelConfig, *, num_heads: int) -> None:
    name = config.attention
    if name not in ATTENTION_BACKENDS:
        raise InputError(f"parallel.attention={name!r} is unknown; choose one of {list(ATTENTION_BACKENDS)}")
    if name == "ring" and config.ring < 2:
        raise InputError(
            f"parallel.attention='ring' was requested with parallel.ring={config.ring}: a ring over a group of 1 "
            "rank passes nothing; set parallel.ring >= 2 or parallel.attention='native'"
        )
    if name in ("ulysses", "deepspeed") and config.ulysses < 2:
        raise InputError(
            f"parallel.attention={name!r} was requested with parallel.ulysses={config.ulysses}: Ulysses over 1 rank "
            "does nothing; set parallel.ulysses >= 2 or parallel.attention='native'"
        )
    if name in ("ulysses", "deepspeed") and num_heads % config.ulysses:
        raise InputError(
            f"parallel.attention={name!r} needs num_heads={num_heads} divisible by parallel.ulysses={config.ulysses}; "
            "use parallel.attention='native' to run the remainder as ring attention"
        )
    if name == "deepspeed" and config.ring != 1:
        raise InputError(f"parallel.attention='deepspeed' is Ulysses only, but parallel.ring={config.ring}; set ring=1")
    if name == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        raise InputError("parallel.attention='deepspeed' needs the deepspeed package (pip install '.[ds]')")
    if name == "transformer_engine" and not _transformer_engine_usable():
        raise InputError(
            "parallel.attention='transformer_engine' needs CUDA and an importable transformer_engine.pytorch; "
            "use parallel.attention='native'"
        )


def _transformer_engine_usable() -> bool:
    return torch.cuda.is_available() and importlib.util.find_spec("transformer_engine") is not None


def plan_layout(
    config: ParallelConfig,
    *,
    world_size: int,
    rank: int,
    num_heads: int,
    guidance_runs_both: bool,
) -> ParallelLayout:
    """Validate ``config`` against the world and return this rank's layout (no process groups yet).

    ``guidance_runs_both`` says whether each step evaluates both the cond and the uncond pass (official GEN3C
    always does); cfg=2 is impossible otherwise. Error messages never mention ``rank``, so all ranks agree.
    Unset degrees follow ``layout=explicit`` (see :func:`explicit_config`); ``parallel.layout=auto`` fills them
    first (:mod:`gen3c_dist.parallel.auto_layout`).
    """
    config = explicit_config(config)
    _check_degrees(config, world_size=world_size, num_heads=num_heads)
    if config.cfg > 2:
        raise InputError(
            f"parallel.cfg={config.cfg} is invalid: the cfg axis splits the two guidance passes, so use 1 or 2"
        )
    if config.cfg == 2 and not guidance_runs_both:
        raise InputError(
            "parallel.cfg=2 puts the cond and uncond passes on different ranks, but guidance here runs only the "
            "conditional pass; set parallel.cfg=1"
        )
    _check_attention(config, num_heads=num_heads)
    data = _check_product(config, world_size=world_size)
    if not 0 <= rank < world_size:
        raise InputError(f"rank {rank} is outside the world of size {world_size}")
    ulysses, ring, note = config.ulysses, config.ring, ""
    if num_heads % ulysses:
        ulysses = math.gcd(config.ulysses, num_heads)
        ring = config.ring * config.ulysses // ulysses
        note = (
            f"parallel.ulysses={config.ulysses} does not divide num_heads={num_heads}; running the same "
            f"{config.ulysses * config.ring} context-parallel ranks as ulysses {ulysses} x ring {ring}"
        )
    return ParallelLayout(
        world_size=world_size, rank=rank, data=data, cfg=config.cfg, ulysses=ulysses, ring=ring,
        attention=config.attention, note=note,
    )
