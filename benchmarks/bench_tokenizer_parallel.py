"""Tokenizer work of one chunk on 1 vs N CPU processes: sequence-parallel decode and spread encodes.

    python benchmarks/bench_tokenizer_parallel.py                       # tiny preset, 121 frames at 128x192, 2 ranks
    python benchmarks/bench_tokenizer_parallel.py --size 64 96 --world 3 --jobs 7 --reps 5

Every process runs one thread (so N processes use N cores, as N GPUs would each run their own slice). The
single-process rows are plain ``VideoTokenizer.decode_to_uint8`` / ``decode`` / ``encode``; the N-process rows
are :func:`decode_to_uint8_distributed` / :func:`decode_distributed` (result on rank 0) and
:func:`encode_distributed` (inputs on rank 0, every latent on every rank). A barrier precedes each repetition;
the time of a repetition is the slowest rank's; the script prints the median after one warm-up, wall clock and
the busiest rank's CPU seconds (less sensitive to other jobs on the cores), and each rank's bytes sent in the
last repetition. Wall timings on a shared machine are noisy.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from typing import Any, Callable

import torch
import torch.distributed as dist

from gen3c_dist.config import DistributedConfig
from gen3c_dist.model.tokenizer import VideoTokenizer, VideoTokenizerConfig, tokenizer_preset
from gen3c_dist.parallel.comm_counter import CommCounter
from gen3c_dist.parallel.decode_parallel import decode_distributed, decode_to_uint8_distributed
from gen3c_dist.parallel.distributed import init_distributed
from gen3c_dist.parallel.tokenizer_parallel import encode_distributed
from local_ranks import launch_local  # benchmarks/local_ranks.py, beside this script


@dataclasses.dataclass(frozen=True)
class Job:
    preset: str
    height: int
    width: int
    jobs: int
    reps: int


def _timed(fn: Callable[[CommCounter], Any], reps: int, distributed: bool) -> dict[str, Any]:
    """Wall and CPU seconds of each repetition (warm-up first) and the bytes this rank sent in the last one.

    CPU seconds (this process, all its threads) show how the work splits even when other jobs share the cores.
    """
    wall, cpu, counter = [], [], CommCounter()
    for _ in range(reps + 1):
        if distributed:
            dist.barrier()
        counter = CommCounter()
        start, start_cpu = time.perf_counter(), time.process_time()
        fn(counter)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return {"wall": wall, "cpu": cpu, "sent": counter.pending}


def run_rank(job: Job) -> dict[str, Any]:
    torch.set_num_threads(1)
    env = init_distributed(DistributedConfig(backend="gloo", timeout_s=600))
    group = dist.group.WORLD if env.distributed else None
    tok = VideoTokenizer.random(tokenizer_preset(job.preset), VideoTokenizerConfig(), seed=0)
    g = torch.Generator().manual_seed(0)
    videos = [torch.rand(1, 3, 121, job.height, job.width, generator=g) * 2 - 1 for _ in range(job.jobs)]
    specs = [(tuple(v.shape), v.dtype) for v in videos]
    latent = tok.encode(videos[0])
    cases: dict[str, Callable[[CommCounter], Any]]
    if env.distributed:
        cases = {
            "decode_to_uint8": lambda c: decode_to_uint8_distributed(tok, latent, group=group, dst=0, counter=c),
            "decode (float)": lambda c: decode_distributed(tok, latent, group=group, dst=0, counter=c),
            f"{job.jobs} encodes": lambda c: encode_distributed(tok, videos if env.rank == 0 else None, specs,
                                                               group=group, src=0, counter=c),
        }
    else:
        cases = {
            "decode_to_uint8": lambda c: tok.decode_to_uint8(latent),
            "decode (float)": lambda c: tok.decode(latent),
            f"{job.jobs} encodes": lambda c: [tok.encode(v) for v in videos],
        }
    with torch.inference_mode():
        timings = {name: _timed(fn, job.reps, env.distributed) for name, fn in cases.items()}
    return {"rank": env.rank, "timings": timings}



def launch(job: Job, world: int) -> list[dict[str, Any]]:
    """``world`` fresh processes (spawned: nothing inherited from this one); world 1 is a plain process."""
    return launch_local(run_rank, job, world)


def median_of_slowest(results: list[dict[str, Any]], name: str, clock: str) -> float:
    per_rep = zip(*(r["timings"][name][clock][1:] for r in results))  # drop the warm-up
    return statistics.median(max(rep) for rep in per_rep)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--size", type=int, nargs=2, default=[128, 192], metavar=("H", "W"))
    parser.add_argument("--jobs", type=int, default=5, help="encodes per chunk (1 + 2 * buffers)")
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    job = Job(args.preset, args.size[0], args.size[1], args.jobs, args.reps)
    serial, spread = launch(job, 1), launch(job, args.world)
    print(f"== preset {job.preset}, 121 frames at {job.height}x{job.width}, fp32, one thread per process, "
          f"median of {job.reps} after 1 warm-up")
    print(f"  {'work':18s} {'clock':5s} {'1 process':>12s} {f'{args.world} processes':>14s} {'speed-up':>9s}")
    for name in serial[0]["timings"]:
        for clock in ("wall", "cpu"):  # cpu: the busiest rank's CPU seconds
            one, many = median_of_slowest(serial, name, clock), median_of_slowest(spread, name, clock)
            print(f"  {name:18s} {clock:5s} {one * 1e3:9.0f} ms {many * 1e3:11.0f} ms {one / many:8.2f}x")
    for result in spread:
        for name, timing in result["timings"].items():
            sent = timing["sent"]
            listed = ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in sorted(sent.items())) or "nothing"
            print(f"  rank {result['rank']} sends for {name}: {listed}")


if __name__ == "__main__":
    main()
