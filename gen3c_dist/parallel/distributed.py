"""Process-group init and teardown: backend and device choice, ``env://`` rendezvous, collective timeout.

``torchrun`` (and ``srun torchrun`` across nodes) sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT,
which the ``env://`` init method reads. A bare ``srun`` (one task per GPU, no torchrun) is accepted too when
MASTER_ADDR/MASTER_PORT are exported: the Slurm task ids stand in for the torchrun variables. A plain ``python``
run (no RANK) is world size 1 and creates no process group at all.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
import time
from typing import Mapping

import torch
import torch.distributed as dist

from gen3c_dist.config import Backend, DistributedConfig
from gen3c_dist.errors import InputError
from gen3c_dist.parallel.watchdog import FAILED_RANK_KEY

log = logging.getLogger(__name__)

BACKENDS = Backend.names()


@dataclasses.dataclass(frozen=True)
class DistEnv:
    """This process's place in the job. ``backend is None`` means a single process without a process group."""

    rank: int
    world_size: int
    local_rank: int
    backend: str | None
    device: torch.device
    timeout_s: float
    fault_grace_s: float
    local_world_size: int = 1  # ranks on this node (torchrun's LOCAL_WORLD_SIZE): Ulysses groups stay inside it

    @property
    def distributed(self) -> bool:
        return self.backend is not None


def resolve_backend(config: DistributedConfig) -> str:
    """``auto`` is NCCL when CUDA is available, else gloo; an explicit NCCL without CUDA is an error."""
    if config.backend not in BACKENDS:
        raise InputError(f"distributed.backend={config.backend!r} is unknown; choose one of {list(BACKENDS)}")
    if config.backend == "auto":
        return "nccl" if torch.cuda.is_available() else "gloo"
    if config.backend == "nccl" and not torch.cuda.is_available():
        raise InputError("distributed.backend='nccl' needs CUDA, and torch sees no GPU; use 'gloo' or 'auto'")
    return config.backend


def read_rank_env(environ: Mapping[str, str]) -> tuple[int, int, int] | None:
    """(rank, world_size, local_rank) from torchrun's variables, else from Slurm's; None for a plain run."""
    if "RANK" in environ:
        world = int(environ.get("WORLD_SIZE", "1"))
        return int(environ["RANK"]), world, int(environ.get("LOCAL_RANK", "0"))
    if int(environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in environ:
        if "MASTER_ADDR" not in environ or "MASTER_PORT" not in environ:
            raise InputError(
                "running under srun with several tasks but without torchrun: export MASTER_ADDR and MASTER_PORT "
                "(the first node's address and a free port), or launch with `srun torchrun ...`"
            )
        return int(environ["SLURM_PROCID"]), int(environ["SLURM_NTASKS"]), int(environ.get("SLURM_LOCALID", "0"))
    return None


def ranks_per_node(environ: Mapping[str, str], world_size: int) -> int:
    """Ranks on this node: torchrun's LOCAL_WORLD_SIZE, else Slurm's tasks per node, else the whole world."""
    if "LOCAL_WORLD_SIZE" in environ:
        return max(1, int(environ["LOCAL_WORLD_SIZE"]))
    per_node = environ.get("SLURM_NTASKS_PER_NODE", "")  # "8" or "8(x2)"
    if per_node.split("(")[0].isdigit():
        return max(1, min(world_size, int(per_node.split("(")[0])))
    return world_size


def init_distributed(config: DistributedConfig, *, environ: Mapping[str, str] | None = None) -> DistEnv:
    """Create the default process group (or nothing for a single plain process) and pick this rank's device."""
    environ = os.environ if environ is None else environ
    backend = resolve_backend(config)
    ids = read_rank_env(environ)
    if ids is None or ids[1] == 1:
        rank, world, local_rank = ids if ids is not None else (0, 1, 0)
        device = torch.device("cuda", local_rank) if backend == "nccl" else torch.device("cpu")
        if device.type == "cuda":
            torch.cuda.set_device(device)
        return DistEnv(rank, world, local_rank, None, device, config.timeout_s, config.fault_grace_s, 1)
    rank, world, local_rank = ids
    if backend == "nccl":
        if local_rank >= torch.cuda.device_count():
            raise InputError(f"LOCAL_RANK={local_rank} but this node has {torch.cuda.device_count()} GPUs")
        torch.cuda.set_device(local_rank)
        # Without this the NCCL watchdog kills the process on a timeout before the fault guard can name the
        # failed rank; CleanUpOnly (2) aborts the communicators and surfaces the error in the calling thread.
        os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "2")
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    dist.init_process_group(  # rank and world passed explicitly so the Slurm ids work; MASTER_* come from env
        backend=backend,
        init_method="env://",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=config.timeout_s),
    )
    log.info("rank %d/%d: %s process group on %s (timeout %.0f s)", rank, world, backend, device, config.timeout_s)
    return DistEnv(rank, world, local_rank, backend, device, config.timeout_s, config.fault_grace_s,
                   ranks_per_node(environ, world))


def arrive_and_wait(store: dist.Store, key: str, count: int, *, wait_s: float | None,
                    abort_key: str | None = None, poll_s: float = 0.1) -> bool:
    """Count this process in at ``key``, then wait until ``count`` have arrived. Through the store, not a
    collective, so it has no collective timeout: a rank with nothing left to do can wait here for hours.

    Returns False when ``wait_s`` ran out or ``abort_key`` appeared (a failure record), True otherwise. A store
    that went away (its host exited after everyone arrived) counts as arrived.
    """
    deadline = None if wait_s is None else time.monotonic() + wait_s
    try:
        store.add(key, 1)
        while store.add(key, 0) < count:
            if abort_key is not None and store.check([abort_key]):
                return False
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(poll_s)
    except (RuntimeError, OSError):
        pass
    return True


EXIT_KEY = "gen3c_dist/exit"


def shutdown_distributed(env: DistEnv, *, wait_s: float | None = None) -> None:
    """Wait for every rank to get here, then destroy the default process group (idempotent).

    The wait keeps whichever process hosts the store alive until the last rank is done with it: without it, a
    rank that finishes first can take the store (and subgroup rendezvous through it) from under its peers.
    It ends early when a rank has recorded a failure: that rank will never arrive.
    """
    if env.distributed and dist.is_initialized():
        store = dist.distributed_c10d._get_default_store()
        if arrive_and_wait(store, EXIT_KEY, env.world_size, wait_s=wait_s, abort_key=FAILED_RANK_KEY):
            dist.destroy_process_group()
        else:
            abandon_process_groups()


def abandon_process_groups() -> None:
    """Leave every process group without waiting on a peer that may be gone: NCCL aborts its communicators
    (``destroy`` could wait on a peer), gloo is destroyed (it never waits)."""
    if dist.get_backend() == dist.Backend.NCCL:
        dist.distributed_c10d._abort_process_group()
    else:
        dist.destroy_process_group()
