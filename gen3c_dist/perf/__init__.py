"""Performance tooling: exact DiT FLOPs, throughput sweeps of the runner, and a hardware projection.

* :mod:`gen3c_dist.perf.flops` - matmul FLOPs of one DiT forward for a ModelConfig and latent shape.
* :mod:`gen3c_dist.perf.sweep` - ``gen3c-sweep``: grid -> runs (local subprocesses or a Slurm array) -> table.
* :mod:`gen3c_dist.perf.projection` - expected seconds per clip on 1-64 GPUs per layout and GPU type.
"""

from gen3c_dist.perf.flops import DiTFlops, dit_forward_flops, dit_tokens, latent_thw, step_flops

__all__ = ["DiTFlops", "dit_forward_flops", "dit_tokens", "latent_thw", "step_flops"]
