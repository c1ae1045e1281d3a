"""Rows of the sweep table, from each run's folder; CSV and JSON output with the metadata block.

All reading of the runner's JSON record happens in :func:`parse_record`, which tolerates absent keys (an
older runner, a failed run): a missing figure becomes a blank cell, never an exception.

Row definitions (per run):

* ``dit_step_s``: median seconds of a denoising step (all steps; the median discounts the first, warm-up one).
* ``load_s``: model loading (``stages_s.load``, or the sum of the record's ``load_s`` per model).
* ``non_dit_share``: ``(wall_s - denoise_s) / wall_s``, the share of the video's wall time outside the DiT
  steps (``wall_s`` is the runner's per-video time; model loading, ``load_s``, is outside it).
* ``dit_tokens_per_s``: ``tokens x forwards per step / dit_step_s``, DiT tokens processed per second.
* ``comm_bytes_per_step``: the largest per-rank total of the runner's per-step communication counters;
  ``comm_bytes_formula`` the same from :func:`gen3c_dist.parallel.comm_counter.expected_bytes_per_step`.
* ``tflops_per_gpu`` (CUDA only): ``forwards x exact forward FLOPs / (world_size x dit_step_s)``; ``mfu`` that
  over the dense bf16 peak of the GPU found by name in :data:`gen3c_dist.perf.hardware.GPUS`.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any, Optional


import numpy
import torch

from gen3c_dist.config import ModelConfig, model_preset
from gen3c_dist.parallel.comm_counter import expected_bytes_per_step
from gen3c_dist.perf.flops import dit_forward_flops, dit_tokens, latent_thw
from gen3c_dist.perf.grid import BASE_OVERRIDES, GridEntry, checked_layout, guidance_runs_both, split_override
from gen3c_dist.perf.hardware import gpu_spec_for_name, host_info

COLUMNS = (
    "run_id", "grid", "layout", "world_size", "ulysses", "ring", "cfg", "preset", "height", "width", "frames",
    "steps", "variant", "overrides", "repeat", "threads", "device", "dtype", "gpu_name", "tokens", "load_s",
    "conditioning_s", "render_s", "encode_s", "broadcast_s", "load_wait_s", "dit_step_s", "denoise_s", "decode_s",
    "write_s", "wall_s", "non_dit_share",
    "dit_tokens_per_s", "comm_bytes_per_step", "comm_bytes_formula", "peak_memory_bytes", "tflops_per_gpu", "mfu",
    "elapsed_s", "error",
)
# The runner's stages: "render" is the replica's shared cache render (parallel.tokenizer=group), "load_wait" the
# time the first chunk waited for the background DiT load; "write" runs in the background with runtime.overlap.
STAGES = ("load", "conditioning", "render", "encode", "broadcast", "load_wait", "decode", "write")
ELEMENT_SIZE = {"float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2}
STDERR_TAIL_LINES = 12
BASE_TEXT = {f"{k}={v}" for k, v in BASE_OVERRIDES.items()}  # the sweep's own defaults, left out of the table


def _number(value: Any) -> Optional[float]:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _max_over_ranks(ranks: Any, field: str, reduce_dict: bool = False) -> Optional[int]:
    values = []
    for line in ranks if isinstance(ranks, list) else []:
        value = line.get(field) if isinstance(line, dict) else None
        if reduce_dict and isinstance(value, dict):
            value = sum(v for v in value.values() if _number(v) is not None)
        if _number(value) is not None:
            values.append(int(value))
    return max(values) if values else None


def parse_record(record: Optional[dict]) -> dict:
    """Every field the table reads from a runner record, with None (or empty) where the record has none."""
    record = record if isinstance(record, dict) else {}
    stages = dict(record.get("stages_s")) if isinstance(record.get("stages_s"), dict) else {}
    load = record.get("load_s")  # model loading, outside the per-video stages: seconds, or seconds per model
    if "load" not in stages and isinstance(load, dict) and any(_number(v) is not None for v in load.values()):
        stages["load"] = sum(v for v in load.values() if _number(v) is not None)
    elif "load" not in stages and _number(load) is not None:
        stages["load"] = load
    steps = [float(s) for s in record.get("steps_s") or [] if _number(s) is not None]
    config = record.get("config") if isinstance(record.get("config"), dict) else None
    layout = record.get("layout") if isinstance(record.get("layout"), dict) else {}
    return {
        "tokens": int(record["tokens"]) if _number(record.get("tokens")) is not None else None,
        "world_size": int(record["world_size"]) if _number(record.get("world_size")) is not None else None,
        "layout": {k: int(v) for k, v in layout.items() if k in ("data", "cfg", "ulysses", "ring", "cp") and _number(v) is not None},
        "stages": {k: float(v) for k, v in stages.items() if _number(v) is not None},
        "steps_s": steps,
        "wall_s": _number(record.get("wall_s")),
        "peak_memory_bytes": _max_over_ranks(record.get("ranks"), "peak_memory_bytes"),
        "comm_bytes_per_step": _max_over_ranks(record.get("ranks"), "comm_bytes_per_step", reduce_dict=True),
        "dtype": record.get("dtype") if isinstance(record.get("dtype"), str) else None,
        "device": record.get("device") if isinstance(record.get("device"), str) else None,
        "config": config,
        "model": config.get("model") if config and isinstance(config.get("model"), dict) else None,
        "versions": record.get("versions") if isinstance(record.get("versions"), dict) else None,
    }


def _read_json(path: Path) -> Optional[dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def stderr_tail(path: Path, lines: int = STDERR_TAIL_LINES) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(line for line in text.strip().splitlines()[-lines:])


def _error(entry: GridEntry, status: Optional[dict], record: Optional[dict], tail: str) -> str:
    if status is None:
        return "not run: no status.json (Slurm task pending or lost)"
    if status.get("timed_out"):
        return f"timed out after {entry.timeout_s:g} s; stderr tail:\n{tail}".rstrip()
    if status.get("returncode") not in (0, None):
        return f"exit status {status.get('returncode')}; stderr tail:\n{tail}".rstrip()
    if record is None:
        return f"exit status 0 but no JSON record was written; stderr tail:\n{tail}".rstrip()
    return ""


def _model_config(entry: GridEntry, parsed: dict) -> ModelConfig:
    if parsed["model"]:
        try:
            return ModelConfig(**parsed["model"])
        except (TypeError, ValueError):
            pass
    return model_preset(entry.preset)


def _formula_bytes(entry: GridEntry, model_cfg: ModelConfig, latent: tuple, both: bool, dtype: Optional[str]) -> Optional[int]:
    element = ELEMENT_SIZE.get(dtype or "")
    if element is None:
        return None
    try:
        layout = checked_layout({"ulysses": entry.ulysses, "ring": entry.ring, "cfg": entry.cfg},
                                world_size=entry.world_size, num_heads=model_cfg.num_heads, guidance_runs_both=both)
    except ValueError:  # a model override changed the head count so that the layout no longer fits
        return None
    return sum(expected_bytes_per_step(layout, model_cfg=model_cfg, latent_BCTHW=(1, 16, *latent), element_size=element).values())


def _timing(parsed: dict, tokens: int, forwards: int) -> dict:
    steps, stages, wall = parsed["steps_s"], parsed["stages"], parsed["wall_s"]
    step = statistics.median(steps) if steps else None
    denoise = stages.get("denoise", sum(steps) if steps else None)
    row = {f"{name}_s": stages.get(name) for name in STAGES}
    row.update(dit_step_s=step, denoise_s=denoise, wall_s=wall)
    row["non_dit_share"] = (wall - denoise) / wall if wall and denoise is not None else None
    row["dit_tokens_per_s"] = tokens * forwards / step if step else None
    return row


def build_row(entry: GridEntry, status: Optional[dict], record: Optional[dict], *, tail: str = "",
              gpu_name: Optional[str] = None) -> dict:
    """One table row; every figure the record lacks is None (a blank CSV cell)."""
    parsed = parse_record(record)
    overrides = dict(split_override(o) for o in entry.overrides)
    both = guidance_runs_both(overrides)
    forwards = 2 if both else 1
    model_cfg = _model_config(entry, parsed)
    latent = latent_thw(entry.height, entry.width)
    tokens = parsed["tokens"] or dit_tokens(model_cfg, latent)
    # The runner's "auto" dtype: bfloat16 on CUDA, float32 on the CPU.
    dtype = parsed["dtype"] or ("bfloat16" if (parsed["device"] or "").startswith("cuda") else "float32")
    degrees = {k: parsed["layout"].get(k, getattr(entry, k)) for k in ("ulysses", "ring", "cfg")}
    row = {**{k: getattr(entry, k) for k in ("run_id", "grid", "layout", "preset", "height", "width", "frames",
                                               "steps", "variant", "repeat")},
           "world_size": parsed["world_size"] or entry.world_size, **degrees,
           "overrides": " ".join(o for o in entry.overrides if o not in BASE_TEXT), "threads": (status or {}).get("threads", entry.threads),
           "device": parsed["device"], "dtype": parsed["dtype"], "gpu_name": gpu_name, "tokens": tokens,
           **_timing(parsed, tokens, forwards),
           "comm_bytes_per_step": parsed["comm_bytes_per_step"], "peak_memory_bytes": parsed["peak_memory_bytes"],
           "elapsed_s": (status or {}).get("elapsed_s"), "error": _error(entry, status, record, tail)}
    row["comm_bytes_formula"] = _formula_bytes(entry, model_cfg, latent, both, dtype) if record is not None else None
    row["tflops_per_gpu"] = row["mfu"] = None
    if (parsed["device"] or "").startswith("cuda") and row["dit_step_s"]:
        flops = forwards * dit_forward_flops(model_cfg, latent).total
        row["tflops_per_gpu"] = flops / (row["world_size"] * row["dit_step_s"]) / 1e12
        spec = gpu_spec_for_name(gpu_name)
        row["mfu"] = row["tflops_per_gpu"] / spec.bf16_tflops if spec else None
    return {column: row.get(column) for column in COLUMNS}


def collect_rows(out_dir: Path, run_ids: Optional[list[str]] = None) -> tuple[list[dict], dict[str, Any]]:
    """Rows for every ``<out>/runs/*/entry.json`` (or only ``run_ids``), ordered by run id, and each run's
    resolved config."""
    rows, configs = [], {}
    for entry_path in sorted(Path(out_dir).glob("runs/*/entry.json")):
        run_dir = entry_path.parent
        if run_ids is not None and run_dir.name not in run_ids:
            continue
        entry = GridEntry.from_dict(json.loads(entry_path.read_text()))
        record = _read_json(run_dir / f"{entry.run_id}.json")
        gpu_file = run_dir / "gpu.txt"
        gpu_name = (gpu_file.read_text().strip() or None) if gpu_file.exists() else None
        rows.append(build_row(entry, _read_json(run_dir / "status.json"), record,
                              tail=stderr_tail(run_dir / "stderr.log"), gpu_name=gpu_name))
        configs[entry.run_id] = parse_record(record)["config"]
    return rows, configs


def _git_commit() -> Optional[str]:
    try:
        found = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                               cwd=Path(__file__).resolve().parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return (found.stdout.strip() or None) if found.returncode == 0 else None


def versions() -> dict:
    return {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__,
            "cuda": str(torch.version.cuda), "gen3c_dist_commit": _git_commit()}


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else value


def write_outputs(out_dir: Path, rows: list[dict], *, grids: list, skipped: list[dict], configs: dict) -> dict[str, Path]:
    """``sweep.csv``, ``sweep.json`` (rows + meta) and ``sweep.png``; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"csv": out_dir / "sweep.csv", "json": out_dir / "sweep.json", "png": out_dir / "sweep.png"}
    with open(paths["csv"], "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows({k: _cell(v) for k, v in row.items()} for row in rows)
    meta = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "hardware": host_info(), "versions": versions(),
        "gpu_names": sorted({r["gpu_name"] for r in rows if r["gpu_name"]}),
        "grids": [dataclasses.asdict(g) if dataclasses.is_dataclass(g) else g for g in grids],
        "skipped": skipped, "configs": configs,
    }
    paths["json"].write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=str))
    from gen3c_dist.perf.plot import plot_sweep  # matplotlib is the optional [bench] extra

    plot_sweep(rows, paths["png"])
    return paths
