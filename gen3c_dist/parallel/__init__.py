"""Multi-GPU execution of the GEN3C DiT: rank layout, context-parallel attention, cfg parallelism, faults.

Runner sequence::

    env = init_distributed(cfg.distributed)                       # torchrun / srun torchrun / plain python
    layout = plan_layout(cfg.parallel, world_size=env.world_size, rank=env.rank,
                         num_heads=model_cfg.num_heads, guidance_runs_both=True)   # before any weights load
    layout = attach_process_groups(layout, timeout_s=env.timeout_s)   # one DeviceMesh over the layout
    with fault_guard(env):
        ...load model, broadcast_tensors(...) from layout.replica_lead...
        forward_fn, notes = parallelize_dit(model, layout, cfg.runtime, device=device, dtype=dtype, counter=counter)
        F = guided_output(forward_fn, layout, x_scaled, t, cond_inputs, uncond_inputs, guidance, counter=counter)
    shutdown_distributed(env)

The model never imports this package; it only exposes the ``attn_op`` seam and its phases. ``parallelize_dit``
(kernel, compile, then context parallelism) is the one place that puts a distributed op behind the seam.
"""

from gen3c_dist.parallel.broadcast import broadcast_tensors, spec_of
from gen3c_dist.parallel.cfg_parallel import CfgExchange, guided_output
from gen3c_dist.parallel.comm_counter import CommCounter
from gen3c_dist.parallel.cp_forward import make_cp_forward
from gen3c_dist.parallel.distributed import DistEnv, init_distributed, shutdown_distributed
from gen3c_dist.parallel.faults import RankFailedError, fault_guard
from gen3c_dist.parallel.mesh import ProcessGroups, attach_process_groups
from gen3c_dist.parallel.layout import ParallelLayout, plan_layout
from gen3c_dist.parallel.parallelize import parallelize_dit

__all__ = [
    "CommCounter",
    "DistEnv",
    "ParallelLayout",
    "ProcessGroups",
    "RankFailedError",
    "attach_process_groups",
    "broadcast_tensors",
    "CfgExchange",
    "fault_guard",
    "guided_output",
    "init_distributed",
    "make_cp_forward",
    "parallelize_dit",
    "plan_layout",
    "shutdown_distributed",
    "spec_of",
]
