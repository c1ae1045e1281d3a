"""Projected seconds per GEN3C-7B clip on 1-64 GPUs per layout and GPU type, checked against the published
Cosmos-1.0-7B single-H100 time; see gen3c_dist/perf/projection.py for the model and every figure's source.

    python benchmarks/projection.py
    python benchmarks/projection.py --gpus h100_sxm --attention-kernel fa3 --non-dit-s 30
"""

from gen3c_dist.perf.projection import main

if __name__ == "__main__":
    main()
