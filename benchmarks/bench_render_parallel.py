"""The 3D-cache render of one chunk on 1 vs N CPU processes (``Cache3D.render`` vs ``render_distributed``).

    python benchmarks/bench_render_parallel.py                        # demo scene, 128x192, 121 frames, 2 ranks
    python benchmarks/bench_render_parallel.py --buffers 2 --foreground-masking --world 3 --reps 7

The cache holds the demo scene (exact ray-traced depth, ``gen3c_dist/demo_scene.py``) at the requested size with
the default cache settings (depth-edge filter 0.05); ``--buffers 2`` inserts a second frame (the scene seen from
the path's 60th camera, unaligned). Every process runs one thread. The single-process row is plain
``cache.render``; the N-process row is :func:`render_distributed` (cache on rank 0, result on rank 0), state
broadcast included. A barrier precedes each repetition, its time is the slowest rank's; the script prints the
median after one warm-up (wall clock and the busiest rank's CPU seconds) and each rank's bytes sent. It also
checks that rank 0's result is bit-identical to a serial render.
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
from gen3c_dist.demo_scene import render_demo_scene
from gen3c_dist.geometry.cache3d import Cache3D
from gen3c_dist.geometry.camera import generate_trajectory
from gen3c_dist.parallel.comm_counter import CommCounter
from gen3c_dist.parallel.distributed import init_distributed
from gen3c_dist.parallel.render_parallel import render_distributed
from local_ranks import launch_local  # benchmarks/local_ranks.py, beside this script

FRAMES = 121


@dataclasses.dataclass(frozen=True)
class Job:
    height: int
    width: int
    buffers: int
    foreground_masking: bool
    reps: int


def build_cache(job: Job) -> tuple[Cache3D, torch.Tensor, torch.Tensor]:
    """The demo-scene cache and the chunk's cameras w2cs [1, 121, 4, 4], Ks [1, 121, 3, 3]."""
    rgb, depth, K = render_demo_scene(job.height, job.width)
    image = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 127.5 - 1
    depth_11HW, K_33 = torch.from_numpy(depth)[None, None], torch.from_numpy(K)
    cache = Cache3D(image, depth_11HW, torch.eye(4)[None], K_33[None], generator=torch.Generator().manual_seed(1),
                    frame_buffer_max=max(job.buffers, 1), foreground_masking=job.foreground_masking)
    w2cs, Ks = generate_trajectory("left", camera_rotation="center_facing", num_frames=FRAMES, movement_distance=0.3,
                                   center_depth=1.0, initial_w2c_44=torch.eye(4), initial_K_33=K_33)
    for _ in range(1, job.buffers):
        cache.update(image, depth_11HW, w2cs[60:61], Ks[60:61], depth_alignment=False)
    return cache, w2cs[None], Ks[None]


def _timed(fn: Callable[[CommCounter], Any], reps: int, distributed: bool) -> dict[str, Any]:
    wall, cpu, counter, result = [], [], CommCounter(), None
    for _ in range(reps + 1):
        if distributed:
            dist.barrier()
        counter = CommCounter()
        start, start_cpu = time.perf_counter(), time.process_time()
        result = fn(counter)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return {"wall": wall, "cpu": cpu, "sent": counter.pending, "result": result}


def run_rank(job: Job) -> dict[str, Any]:
    torch.set_num_threads(1)
    env = init_distributed(DistributedConfig(backend="gloo", timeout_s=600))
    group = dist.group.WORLD if env.distributed else None
    cache, w2cs, Ks = build_cache(job) if env.rank == 0 else (None, None, None)
    if env.distributed:
        def fn(counter: CommCounter) -> Any:
            return render_distributed(cache, w2cs, Ks, group=group, src=0, device=torch.device("cpu"), counter=counter)
    else:
        def fn(counter: CommCounter) -> Any:
            return cache.render(w2cs, Ks)
    with torch.inference_mode():
        timing = _timed(fn, job.reps, env.distributed)
    exact = None
    if env.rank == 0:  # the serial render with the generator where the timed calls left it
        reference = build_cache(job)[0]
        for _ in range(job.reps + 1):
            expected = reference.render(w2cs, Ks)
        exact = all(torch.equal(a, b) for a, b in zip(timing["result"], expected))
        exact = exact and torch.equal(reference.generator.get_state(), cache.generator.get_state())
    timing.pop("result")
    return {"rank": env.rank, "timing": timing, "exact": exact}


def median_of_slowest(results: list[dict[str, Any]], clock: str) -> float:
    per_rep = zip(*(r["timing"][clock][1:] for r in results))  # drop the warm-up
    return statistics.median(max(rep) for rep in per_rep)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=2, default=[128, 192], metavar=("H", "W"))
    parser.add_argument("--buffers", type=int, default=1)
    parser.add_argument("--foreground-masking", action="store_true")
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    job = Job(args.size[0], args.size[1], args.buffers, args.foreground_masking, args.reps)
    serial, spread = launch_local(run_rank, job, 1), launch_local(run_rank, job, args.world)
    print(f"== demo scene, {FRAMES} frames x {job.buffers} buffer(s) at {job.height}x{job.width}, fp32, "
          f"foreground masking {job.foreground_masking}, one thread per process, median of {job.reps} after 1 warm-up")
    print(f"  {'clock':5s} {'1 process':>12s} {f'{args.world} processes':>14s} {'speed-up':>9s}")
    for clock in ("wall", "cpu"):  # cpu: the busiest rank's CPU seconds
        one, many = median_of_slowest(serial, clock), median_of_slowest(spread, clock)
        print(f"  {clock:5s} {one * 1e3:9.0f} ms {many * 1e3:11.0f} ms {one / many:8.2f}x")
    print(f"  rank 0 result bit-identical to the serial render (generator state included): {spread[0]['exact']}")
    for result in spread:
        sent = result["timing"]["sent"]
        listed = ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in sorted(sent.items())) or "nothing"
        busy = statistics.median(result["timing"]["cpu"][1:])
        print(f"  rank {result['rank']}: {busy * 1e3:.0f} ms CPU per render; sends {listed}")


if __name__ == "__main__":
    main()
