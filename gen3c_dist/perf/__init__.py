"""Performance tooling: exact DiT FLOPs, throughput sweeps of the runner, and a hardware projection.

* :mod:`gen3c_dist.perf.flops` - matmul FLOPs of one DiT forward for a ModelConfig and latent shape.
* :mod:`gen3c_dist.perf.sweep` - ``gen3c-sweep``: grid -> runs (local subprocesses or a Slurm array) -> table.
* :mod:`gen3c_dist.perf.projection` - expected seconds per clip on 1-64 GPUs per layout and GPU type.

Decision: perf/ stays in the installed package, although most of it is tooling. The runner needs two parts of it
at run time: ``parallel.layout=auto`` compares layouts with the projection's cost model
(:func:`gen3c_dist.perf.projection.run_chunk_cost`), and ``gen3c-plan`` prints that comparison; the record's
FLOP-based figures and the installed ``gen3c-sweep`` command use the rest. Splitting it would leave an installed
runner whose default layout depends on a module a user may not have. The GPU check and the CPU benchmarks, which
nothing at run time needs, live in ``benchmarks/`` outside the package.
"""

from gen3c_dist.perf.flops import DiTFlops, dit_forward_flops, dit_tokens, latent_thw, step_flops

__all__ = ["DiTFlops", "dit_forward_flops", "dit_tokens", "latent_thw", "step_flops"]
