"""``gen3c-sweep``: throughput sweeps of the runner over world sizes, layouts, shapes and extra overrides.

    gen3c-sweep --world-sizes 1 2 3 --layouts single ulysses ring cfg --steps 4 --out /tmp/sweep
    gen3c-sweep --grid cpu-report                       # the CPU report grid (see gen3c_dist.perf.grid)
    gen3c-sweep --grid grid.yaml --out results/h100     # grid file: GridSpec fields, optionally `grids: [...]`
    gen3c-sweep --grid grid.yaml --slurm --out /shared/sweep && sbatch /shared/sweep/slurm/sweep_1x8.sbatch
    gen3c-sweep --collect /shared/sweep                 # table and plot from the runs' records
    gen3c-sweep --project                               # the projection table (gen3c_dist.perf.projection)

Each grid entry runs as its own process tree (``python -m gen3c_dist.run`` for one process, torchrun for more)
with ``OMP_NUM_THREADS`` = the grid's threads (default 1 per process, so runs with 1, 2 or 3 processes on a
2-core machine compare fairly). Entries whose layout does not fit the world size are reported and skipped;
a failed or timed-out run becomes a row with its error. Outputs: ``<out>/sweep.csv``, ``<out>/sweep.json``
(rows, plus hardware, versions, grids, skipped entries and each run's resolved config) and ``<out>/sweep.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Optional

from gen3c_dist.perf.grid import LAYOUTS, GridEntry, GridSpec, entry_summary, expand, load_grid
from gen3c_dist.perf.hardware import cuda_device_name, hardware_slug
from gen3c_dist.perf.launch import run_entry, runner_command, run_dir_of, write_slurm_scripts
from gen3c_dist.perf.report import collect_rows, write_outputs

AXIS_FLAGS = ("world_sizes", "layouts", "resolutions", "frames", "steps", "preset", "config_name", "override", "axis", "variant")
RUN_FLAGS = ("repeats", "timeout", "threads", "gpus_per_node")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gen3c-sweep", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", help="a grid preset name (cpu-report) or a YAML/JSON grid file")
    parser.add_argument("--world-sizes", nargs="+", type=int)
    parser.add_argument("--layouts", nargs="+", choices=LAYOUTS)
    parser.add_argument("--resolutions", nargs="+", help="HEIGHTxWIDTH, e.g. 128x192")
    parser.add_argument("--frames", nargs="+", type=int)
    parser.add_argument("--steps", nargs="+", type=int)
    parser.add_argument("--preset", help="model preset: tiny, gen3c_cosmos_7b (random weights time the same)")
    parser.add_argument("--config-name", help="runner config (default demo)")
    parser.add_argument("--override", action="append", default=None, metavar="KEY=VALUE", help="every run (repeatable)")
    parser.add_argument("--axis", action="append", default=None, metavar="KEY=V1,V2", help="an extra override axis")
    parser.add_argument("--variant", action="append", default=None, metavar="NAME:K=V,K=V",
                        help="a named override bundle, e.g. before:parallel.tokenizer=lead,runtime.overlap=false")
    parser.add_argument("--repeats", type=int)
    parser.add_argument("--timeout", type=float, help="seconds per run before its process group is killed")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS per process (default 1)")
    parser.add_argument("--gpus-per-node", type=int)
    parser.add_argument("--out", help="output folder (default benchmarks/results/<hardware>)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands and skipped entries only")
    parser.add_argument("--slurm", action="store_true", help="write and print Slurm array scripts instead of running")
    parser.add_argument("--time-limit", default="01:00:00", help="--time of each Slurm array task")
    parser.add_argument("--collect", metavar="DIR", help="build sweep.csv/json/png from the runs under DIR")
    return parser


def _variants(texts: list[str]) -> dict[str, list[str]]:
    out = {}
    for text in texts:
        name, _, bundle = text.partition(":")
        out[name] = [o for o in bundle.split(",") if o]
    return out


def _axes(texts: list[str]) -> dict[str, list[str]]:
    out = {}
    for text in texts:
        key, sep, values = text.partition("=")
        if not sep or not values:
            raise ValueError(f"--axis {text!r} must read KEY=V1,V2")
        out[key] = values.split(",")
    return out


def specs_from_args(args: argparse.Namespace) -> list[GridSpec]:
    """Grid specs from --grid, or one spec from the axis flags; run flags (repeats, timeout...) apply to all."""
    given_axes = [f for f in AXIS_FLAGS if getattr(args, f) is not None]
    if args.grid and given_axes:
        raise ValueError(f"--grid {args.grid} defines the grid; drop --{given_axes[0].replace('_', '-')} or put it in the grid")
    if args.grid:
        specs = load_grid(args.grid)
    else:
        fields = {"world_sizes": args.world_sizes, "layouts": args.layouts, "resolutions": args.resolutions,
                  "frames": args.frames, "steps": args.steps, "preset": args.preset, "config_name": args.config_name,
                  "overrides": args.override, "axes": _axes(args.axis) if args.axis else None,
                  "variants": _variants(args.variant) if args.variant else None}
        specs = [GridSpec(name="cli", **{k: v for k, v in fields.items() if v is not None})]
    run_fields = {"repeats": args.repeats, "timeout_s": args.timeout, "threads": args.threads,
                  "gpus_per_node": args.gpus_per_node}
    return [dataclasses.replace(s, **{k: v for k, v in run_fields.items() if v is not None}) for s in specs]


def report_skipped(skipped: list[dict]) -> None:
    for item in skipped:
        where = f"{item['layout']} n={item['world_size']} {item['height']}x{item['width']} f{item['frames']}"
        print(f"skipped [{item['grid']}] {where}{' [' + item['variant'] + ']' if item['variant'] else ''}: {item['reason']}")


def _save_plan(out_dir: Path, specs: list[GridSpec], skipped: list[dict]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    plan = {"grids": [dataclasses.asdict(s) for s in specs], "skipped": skipped}
    (out_dir / "plan.json").write_text(json.dumps(plan, indent=1))


def _load_plan(out_dir: Path) -> tuple[list, list]:
    try:
        plan = json.loads((out_dir / "plan.json").read_text())
    except (OSError, ValueError):
        return [], []
    return plan.get("grids", []), plan.get("skipped", [])


def run_local(entries: list[GridEntry], out_dir: Path) -> None:
    gpu_name = cuda_device_name()
    for i, entry in enumerate(entries, 1):
        print(f"[{i}/{len(entries)}] {entry.run_id}: {entry_summary(entry)} ...", end=" ", flush=True)
        status = run_entry(entry, out_dir, gpu_name=gpu_name)
        if status["timed_out"]:
            print(f"TIMED OUT after {entry.timeout_s:g} s")
        else:
            print(f"exit {status['returncode']} in {status['elapsed_s']:.1f} s")


def collect(out_dir: Path, run_ids: Optional[list[str]] = None) -> dict[str, Path]:
    """The table of the runs under ``out_dir`` (all, or this sweep's ``run_ids``)."""
    grids, skipped = _load_plan(out_dir)
    rows, configs = collect_rows(out_dir, run_ids)
    paths = write_outputs(out_dir, rows, grids=grids, skipped=skipped, configs=configs)
    print_summary(rows)
    for kind, path in paths.items():
        print(f"wrote {path}")
    return paths


def print_summary(rows: list[dict]) -> None:
    print(f"\n{'run':48s} {'step ms':>9s} {'wall s':>8s} {'comm B/step':>12s} {'formula':>12s}  error")
    for row in rows:
        step = f"{row['dit_step_s'] * 1e3:9.1f}" if row["dit_step_s"] else f"{'-':>9s}"
        wall = f"{row['wall_s']:8.2f}" if row["wall_s"] else f"{'-':>8s}"
        comm = "-" if row["comm_bytes_per_step"] is None else f"{row['comm_bytes_per_step']:,}"
        formula = "-" if row["comm_bytes_formula"] is None else f"{row['comm_bytes_formula']:,}"
        error = (row["error"] or "").splitlines()[0] if row["error"] else ""
        print(f"{row['run_id']:48s} {step} {wall} {comm:>12s} {formula:>12s}  {error}")


def run(argv: Optional[list[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.collect:
        collect(Path(args.collect))
        return 0
    specs = specs_from_args(args)
    out_dir = Path(args.out or Path("benchmarks") / "results" / hardware_slug())
    entries, skipped = expand(specs)
    report_skipped(skipped)
    if args.dry_run:
        for entry in entries:
            print(" ".join(runner_command(entry, run_dir_of(out_dir, entry.run_id))))
        return 0
    _save_plan(out_dir, specs, skipped)
    if args.slurm:
        scripts, unfit = write_slurm_scripts(entries, out_dir, time_limit=args.time_limit)
        for item in unfit:
            print(f"skipped {item['run_id']} for Slurm: {item['reason']}")
        for path, text in scripts.items():
            print(f"# ---- {path}\n{text}")
        print("submit: " + " && ".join(f"sbatch {p}" for p in scripts) + f"; then: gen3c-sweep --collect {out_dir}")
        return 0
    run_local(entries, out_dir)
    collect(out_dir, [entry.run_id for entry in entries])
    return 0


def main(argv: Optional[list[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--project"]:
        from gen3c_dist.perf.projection import main as projection_main  # its own CLI, only for --project

        projection_main(argv[1:])
        return
    try:
        sys.exit(run(argv))
    except ValueError as err:
        print(f"gen3c-sweep: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
