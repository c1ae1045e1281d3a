"""Throughput sweep of the runner; see gen3c_dist/perf/sweep.py (console script ``gen3c-sweep``).

    python benchmarks/sweep.py --grid cpu-report
    python benchmarks/sweep.py --world-sizes 1 2 --layouts single ulysses cfg --steps 4 --out /tmp/sweep
"""

from gen3c_dist.perf.sweep import main

if __name__ == "__main__":
    main()
