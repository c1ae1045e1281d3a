"""The report of ``benchmarks/gpu_check.py``: its fields, their checks, the markdown table, atomic writes.

:data:`RESULT_FIELDS` is the contract: every step record carries every field of its step, set to None (or an
empty list) until measured, so a stopped step still has the full shape. :func:`problems` lists every field that
is missing or not sane; the smoke run fails on any, and its test asserts the values themselves.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Iterator

from gpu_check_budget import DONE, STATUSES  # benchmarks/, beside this file

SCHEMA = "gen3c_dist.gpu_check/1"
JSON_NAME, MARKDOWN_NAME = "gpu_check.json", "gpu_check.md"
TOP_FIELDS = ("schema", "mode", "started_at", "wall_s", "budget_s", "config", "steps")
CONFIG_FIELDS = ("model_preset", "tokenizer_preset", "video_thw", "latent_thw", "text_tokens", "chunk_steps",
                 "repeats", "device", "dtype", "memory_kind", "seed", "step_budgets_s")
ENVELOPE_FIELDS = ("name", "status", "budget_s", "elapsed_s", "note", "error", "result")
STEP_NAMES = ("device", "dit_forward", "dit_compile", "tokenizer", "runner_chunk")
RESULT_FIELDS = {
    "device": ("device_type", "name", "total_memory_gib", "torch", "cuda", "cudnn", "capability", "multiprocessors",
               "driver", "python", "cpu_model", "cpu_cores", "matmul"),
    "dit_forward": ("model_preset", "parameters", "latent_thw", "tokens", "text_tokens", "dtype", "flops", "init_s",
                    "init_device", "weights_gib", "kernel_packages", "auto_kernel", "refused", "kernels"),
    "dit_compile": ("kernel", "backend", "notes", "first_call_s", "forward_s", "best_s", "compile_s", "eager_best_s",
                    "speedup_vs_eager", "tflops", "mfu", "peak_memory_gib"),
    "tokenizer": ("preset", "parameters", "init_s", "init_device", "video_thw", "latent_thw", "warmup_s", "encode_s",
                  "decode_s", "encode_best_s", "decode_best_s", "encode_peak_memory_gib", "decode_peak_memory_gib"),
    "runner_chunk": ("steps_requested", "steps_run", "full_chunk", "predicted_s", "plan", "estimated_dit_init_s",
                     "command", "returncode", "wall_s", "record", "step_s_median", "denoise_s_at_requested_steps",
                     "log_tail"),
}
NESTED_FIELDS = {
    ("device", "matmul"): ("n", "dtype", "warmup", "repeats", "times_s", "median_s", "tflops"),
    ("dit_forward", "flops"): ("total", "attention", "linear"),
    ("runner_chunk", "record"): ("stages_s", "steps_s", "load_s", "wall_s", "frames", "tokens", "device", "dtype",
                                 "versions"),
}
KERNEL_FIELDS = ("kernel", "options", "auto", "status", "reason", "warmup_s", "forward_s", "best_s", "tflops", "mfu",
                 "peak_memory_gib")
KERNEL_STATUSES = ("ran", "skipped", "failed", "left_out", "stopped")
# None is a real value here: GPU facts on the CPU, no driver query, a reason for a kernel that ran, the plan of a
# runner step that had no forward time to plan with.
GPU_ONLY = ("cuda", "cudnn", "capability", "multiprocessors")
NULLABLE = {("device", "driver"), ("runner_chunk", "predicted_s")}
POSITIVE = ("tflops", "mfu", "_gib", "parameters", "tokens", "speedup_vs_eager")
SIGNED = ("compile_s",)  # first call minus best forward: an estimate that noise could push below zero


# ---- checks -----------------------------------------------------------------------------------------------
def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _value_problem(key: str, value: Any) -> str | None:
    """Sanity of one measured value, by what its name says it is."""
    if key in SIGNED:
        return None if _number(value) else "is not a finite number"
    if key.endswith("_s") and isinstance(value, dict):
        ok = value and all(_number(v) and v >= 0 for v in value.values())
        return None if ok else "must map stages to seconds >= 0"
    if key.endswith("_s") and isinstance(value, list):
        return None if value and all(_number(v) and v > 0 for v in value) else "must be a non-empty list of seconds > 0"
    if key.endswith("_s") or key.endswith(POSITIVE):
        return None if _number(value) and value > 0 else f"must be a number > 0, got {value!r}"
    return None


def _field_problems(where: str, data: dict, fields: tuple[str, ...], nullable: set[str]) -> Iterator[str]:
    for key in fields:
        if key not in data:
            yield f"{where}.{key} is missing"
        elif data[key] is None:
            if key not in nullable:
                yield f"{where}.{key} is null"
        else:
            problem = _value_problem(key, data[key])
            if problem:
                yield f"{where}.{key} {problem}"


def _step_problems(name: str, step: dict, *, strict: bool) -> Iterator[str]:
    yield from (f"steps.{name}.{k} is missing" for k in ENVELOPE_FIELDS if k not in step)
    if step.get("status") not in STATUSES:
        yield f"steps.{name}.status {step.get('status')!r} is not one of {STATUSES}"
    if strict and step.get("status") != DONE:
        yield f"steps.{name} is {step.get('status')!r}, not done ({step.get('error') or step.get('note')})"
    if step.get("status") != DONE:
        return
    result = step.get("result", {})
    on_cpu = name == "device" and result.get("device_type") == "cpu"
    nullable = {key for step_name, key in NULLABLE if step_name == name} | (set(GPU_ONLY) if on_cpu else set())
    yield from _field_problems(f"steps.{name}", result, RESULT_FIELDS[name], nullable)
    for (step_name, key), fields in NESTED_FIELDS.items():
        if step_name == name and isinstance(result.get(key), dict):
            yield from _field_problems(f"steps.{name}.{key}", result[key], fields, set())
    for index, entry in enumerate(result.get("kernels") or []):
        yield from _kernel_problems(f"steps.{name}.kernels[{index}]", entry, strict=strict)


def _kernel_problems(where: str, entry: dict, *, strict: bool) -> Iterator[str]:
    if entry.get("status") not in KERNEL_STATUSES:
        yield f"{where}.status {entry.get('status')!r} is not one of {KERNEL_STATUSES}"
    if entry.get("status") != "ran":
        if strict:
            yield f"{where} ({entry.get('kernel')}) did not run: {entry.get('reason')}"
        if not entry.get("reason"):
            yield f"{where} ({entry.get('kernel')}) did not run and gives no reason"
        return
    yield from _field_problems(where, entry, KERNEL_FIELDS, {"reason"})


def problems(report: dict, *, strict: bool) -> list[str]:
    """Every missing or insane field. ``strict`` (the smoke run): every step done, every kernel run."""
    found = [f"{key} is missing" for key in TOP_FIELDS if key not in report]
    if report.get("schema") != SCHEMA:
        found.append(f"schema is {report.get('schema')!r}, not {SCHEMA!r}")
    found += [f"config.{key} is missing" for key in CONFIG_FIELDS if key not in report.get("config", {})]
    steps = report.get("steps", {})
    for name in STEP_NAMES:
        if name not in steps:
            found.append(f"steps.{name} is missing")
        else:
            found += list(_step_problems(name, steps[name], strict=strict))
    runner = steps.get("runner_chunk", {})
    if runner.get("status") == DONE:
        result = runner["result"]
        if len(result["record"]["steps_s"]) != result["steps_run"]:
            found.append("steps.runner_chunk: the record's steps_s does not have steps_run entries")
        if strict and not result["full_chunk"]:
            found.append("steps.runner_chunk ran fewer steps than requested")
    return found


# ---- markdown ---------------------------------------------------------------------------------------------
def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if not isinstance(value, float):
        return str(value)
    if value and abs(value) < 10**-digits * 5:  # smoke-run rates: keep two significant digits, not "0.00"
        return f"{value:.2g}"
    return f"{value:.{digits}f}"


def _result(steps: dict, name: str) -> dict:
    return steps.get(name, {}).get("result", {})


def _measurement_rows(steps: dict) -> Iterator[tuple[str, str]]:
    device = _result(steps, "device")
    if device.get("matmul"):
        mm = device["matmul"]
        yield f"{mm['dtype']} {mm['n']}^3 matmul", f"{_fmt(mm['tflops'], 1)} TFLOP/s (median of {mm['repeats']})"
    forward = _result(steps, "dit_forward")
    if forward.get("init_s") is not None:
        yield (f"DiT random init on {forward['init_device']}",
               f"{_fmt(forward['init_s'])} s, {_fmt(forward['weights_gib'])} GiB")
    for entry in forward.get("kernels", []):
        label = f"DiT forward, {entry['kernel']}" + (" (auto)" if entry["auto"] else "")
        if entry["status"] == "ran":
            times = ", ".join(_fmt(t) for t in entry["forward_s"])
            yield label, (f"{times} s; {_fmt(entry['tflops'], 1)} TFLOP/s, MFU {_fmt(entry['mfu'])}, "
                          f"peak {_fmt(entry['peak_memory_gib'], 1)} GiB")
        else:
            yield label, f"{entry['status']}: {entry['reason']}"
    compiled = _result(steps, "dit_compile")
    if compiled.get("first_call_s") is not None:
        yield (f"DiT compiled ({compiled['backend']}, {compiled['kernel']})",
               f"first call {_fmt(compiled['first_call_s'])} s, forward {_fmt(compiled['best_s'])} s "
               f"({_fmt(compiled['speedup_vs_eager'])}x eager), MFU {_fmt(compiled['mfu'])}")
    tokenizer = _result(steps, "tokenizer")
    for part in ("encode", "decode"):
        if tokenizer.get(f"{part}_best_s") is not None:
            size = "x".join(str(n) for n in tokenizer["video_thw"])
            yield (f"tokenizer {part} {size}", f"{_fmt(tokenizer[f'{part}_best_s'])} s, "
                   f"peak {_fmt(tokenizer[f'{part}_peak_memory_gib'], 1)} GiB")
    runner = _result(steps, "runner_chunk")
    if runner.get("record"):
        stages = ", ".join(f"{k} {_fmt(v, 1)}" for k, v in sorted(runner["record"]["stages_s"].items()))
        yield (f"runner chunk, {runner['steps_run']} of {runner['steps_requested']} steps",
               f"wall {_fmt(runner['wall_s'], 1)} s; median step {_fmt(runner['step_s_median'])} s; "
               f"stages (s): {stages}")


def to_markdown(report: dict) -> str:
    config, steps = report["config"], report["steps"]
    device = _result(steps, "device")
    lines = [f"# GPU check ({report['mode']}): {device.get('name', config['device'])}", "",
             f"{report['started_at']}; torch {device.get('torch')}, CUDA {device.get('cuda')}, cuDNN "
             f"{device.get('cudnn')}; {config['model_preset']} at {'x'.join(map(str, config['video_thw']))}, "
             f"{config['dtype']}; total budget {report['budget_s']:.0f} s, used {report['wall_s']:.0f} s.", "",
             "| step | status | elapsed s | budget s | note |", "| --- | --- | --- | --- | --- |"]
    for name in STEP_NAMES:
        step = steps.get(name)
        if step is not None:
            note = (step["note"] or step["error"] or "").replace("|", "/").replace("\n", " ")
            lines.append(f"| {name} | {step['status']} | {step['elapsed_s']:.1f} | {step['budget_s']:.0f} | {note} |")
    lines += ["", "| measurement | value |", "| --- | --- |"]
    lines += [f"| {what} | {value} |" for what, value in _measurement_rows(steps)]
    return "\n".join(lines) + "\n"


# ---- files ------------------------------------------------------------------------------------------------
def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_report(out_dir: Path, report: dict) -> None:
    """Both files, each complete or absent: the check rewrites them after every step."""
    _atomic_write(out_dir / JSON_NAME, json.dumps(report, indent=1, default=str) + "\n")
    _atomic_write(out_dir / MARKDOWN_NAME, to_markdown(report))
