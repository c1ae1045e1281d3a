"""benchmarks/gpu_check.py on the CPU: the smoke run end to end (every field present, every value the one its
inputs imply), the budget's clean stops, the runner-step plan, the kernel list and the report checks."""

from __future__ import annotations

import copy
import functools
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

from gen3c_dist.config import model_preset  # noqa: E402
from gen3c_dist.model.dit import GEN3CDiT, count_parameters  # noqa: E402
from gen3c_dist.model.kernels import KernelEnvironment  # noqa: E402
from gen3c_dist.model.weights import random_dit  # noqa: E402
from gen3c_dist.perf.flops import dit_forward_flops, dit_tokens  # noqa: E402

from gpu_check_budget import Budget, BudgetSpent, StepClock  # noqa: E402
from gpu_check_context import SMOKE, CheckContext  # noqa: E402
from gpu_check_measure import random_dit_on_device  # noqa: E402
from gpu_check_model_steps import kernel_candidates, score_matrix_refusal, step_dit_forward  # noqa: E402
from gpu_check_report import RESULT_FIELDS, STEP_NAMES, problems  # noqa: E402
from gpu_check_runner import plan_runner_steps, step_runner_chunk  # noqa: E402

GIB = 2**30


def approx(value: float) -> object:
    return pytest.approx(value, rel=1e-9)


# ---- the smoke run ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("gpu_check_out")
    work = tmp_path_factory.mktemp("gpu_check_work")
    found = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--smoke", "--out", str(out), "--work-dir",
                            str(work)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)
    assert found.returncode == 0, found.stdout[-3000:] + found.stderr[-3000:]
    return json.loads((out / "gpu_check.json").read_text()), out


def test_smoke_run_completes_every_step_with_every_field(smoke: tuple[dict, Path]) -> None:
    report, out = smoke
    assert report["mode"] == "smoke" and report["problems"] == [] and problems(report, strict=True) == []
    assert list(report["steps"]) == list(STEP_NAMES)
    for name, step in report["steps"].items():
        assert step["status"] == "done" and step["error"] is None, (name, step["note"])
        assert set(RESULT_FIELDS[name]) <= set(step["result"]), name
        assert 0 < step["elapsed_s"] <= step["budget_s"]
    assert report["config"]["memory_kind"] == "host_max_rss" and report["config"]["device"] == "cpu"
    table = (out / "gpu_check.md").read_text()
    assert all(f"| {name} | done |" in table for name in STEP_NAMES)


def test_smoke_device_and_matmul(smoke: tuple[dict, Path]) -> None:
    device = smoke[0]["steps"]["device"]["result"]
    assert device["device_type"] == "cpu" and device["torch"] == torch.__version__
    assert device["cuda"] is None and device["capability"] is None and device["total_memory_gib"] > 0
    matmul = device["matmul"]
    assert (matmul["n"], matmul["repeats"], len(matmul["times_s"])) == (SMOKE.matmul_n, SMOKE.matmul_repeats, 3)
    assert matmul["median_s"] == pytest.approx(statistics.median(matmul["times_s"]), abs=1e-6)
    assert matmul["tflops"] == approx(2 * SMOKE.matmul_n**3 / matmul["median_s"] / 1e12)


def test_smoke_dit_forward_figures_follow_from_the_flop_count(smoke: tuple[dict, Path]) -> None:
    report = smoke[0]
    forward = report["steps"]["dit_forward"]["result"]
    cfg = model_preset("tiny")
    flops = dit_forward_flops(cfg, SMOKE.latent_thw, text_tokens=SMOKE.text_tokens)
    with torch.device("meta"):
        parameters = count_parameters(GEN3CDiT(cfg))
    assert forward["tokens"] == dit_tokens(cfg, SMOKE.latent_thw) == flops.tokens
    assert forward["flops"] == {"total": flops.total, "attention": flops.attention, "linear": flops.linear}
    assert forward["parameters"] == parameters and forward["weights_gib"] == approx(parameters * 2 / GIB)
    assert forward["auto_kernel"] == "sdpa" and set(forward["refused"]) == {"sdpa_cudnn", "sdpa_efficient",
                                                                           "flash_attn", "te"}
    assert [entry["kernel"] for entry in forward["kernels"]] == ["sdpa", "sdpa_flash", "sdpa_math"]
    ceiling = report["steps"]["device"]["result"]["matmul"]["tflops"] * 1e12
    for entry in forward["kernels"]:
        assert entry["status"] == "ran" and len(entry["forward_s"]) == SMOKE.repeats
        assert entry["best_s"] == min(entry["forward_s"])
        assert entry["tflops"] == approx(flops.total / entry["best_s"] / 1e12)
        assert entry["mfu"] == approx(flops.total / entry["best_s"] / ceiling)


def test_smoke_compile_and_tokenizer(smoke: tuple[dict, Path]) -> None:
    steps = smoke[0]["steps"]
    compiled = steps["dit_compile"]["result"]
    eager = steps["dit_forward"]["result"]["kernels"][0]["best_s"]
    assert (compiled["backend"], compiled["kernel"], compiled["eager_best_s"]) == ("aot_eager", "sdpa", eager)
    assert len(compiled["forward_s"]) == SMOKE.repeats and compiled["best_s"] == min(compiled["forward_s"])
    assert compiled["compile_s"] == approx(compiled["first_call_s"] - compiled["best_s"])
    assert compiled["speedup_vs_eager"] == approx(eager / compiled["best_s"])
    tokenizer = steps["tokenizer"]["result"]
    assert tokenizer["latent_thw"] == list(SMOKE.latent_thw) and tokenizer["video_thw"] == list(SMOKE.video_thw)
    assert len(tokenizer["encode_s"]) == len(tokenizer["decode_s"]) == SMOKE.repeats
    assert tokenizer["decode_best_s"] == min(tokenizer["decode_s"]) and tokenizer["parameters"] > 0


def test_smoke_runner_chunk_comes_from_the_runners_record(smoke: tuple[dict, Path]) -> None:
    report, out = smoke
    runner = report["steps"]["runner_chunk"]["result"]
    record = json.loads((out / "runner_record.json").read_text())
    assert runner["returncode"] == 0 and runner["full_chunk"] is True
    assert runner["steps_run"] == runner["steps_requested"] == SMOKE.chunk_steps == len(record["steps_s"])
    assert runner["record"]["stages_s"] == record["stages_s"] and runner["record"]["steps_s"] == record["steps_s"]
    assert {"conditioning", "encode", "denoise", "decode"} <= set(record["stages_s"])
    assert record["frames"] == SMOKE.video_thw[0]
    assert record["tokens"] == dit_tokens(model_preset("tiny"), SMOKE.latent_thw)
    assert record["config"]["sampler"]["steps"] == SMOKE.chunk_steps and record["config"]["text"]["enabled"] is False
    assert record["config"]["cache"]["generated_frame_depth"] == "cache_render"
    assert record["config"]["input"]["depth"].endswith("demo_scene_depth.npz")
    assert runner["denoise_s_at_requested_steps"] == approx(statistics.median(record["steps_s"]) * SMOKE.chunk_steps)
    assert "sampler.steps=2" in runner["command"] and "model=tiny" in runner["command"]


# ---- the report checks can fail ---------------------------------------------------------------------------
def test_problems_name_missing_and_insane_fields(smoke: tuple[dict, Path]) -> None:
    report = copy.deepcopy(smoke[0])
    del report["steps"]["tokenizer"]["result"]["decode_best_s"]
    report["steps"]["dit_forward"]["result"]["kernels"][1]["best_s"] = 0.0
    report["steps"]["device"]["result"]["matmul"]["tflops"] = math.nan
    report["steps"]["runner_chunk"]["result"]["record"]["steps_s"].append(1.0)
    found = problems(report, strict=True)
    assert "steps.tokenizer.decode_best_s is missing" in found
    assert any(p.startswith("steps.dit_forward.kernels[1].best_s must be a number > 0") for p in found)
    assert any(p.startswith("steps.device.matmul.tflops must be a number > 0") for p in found)
    assert "steps.runner_chunk: the record's steps_s does not have steps_run entries" in found
    report = copy.deepcopy(smoke[0])
    report["steps"]["dit_compile"]["status"] = "partial"
    assert problems(report, strict=False) == [] and len(problems(report, strict=True)) == 1


# ---- budgets ----------------------------------------------------------------------------------------------
def test_the_alarm_stops_a_unit_that_overruns_and_keeps_earlier_results() -> None:
    def step(clock: StepClock, result: dict) -> None:
        result["first"] = 1.0
        try:
            time.sleep(5)  # a unit far past its prediction
        except Exception:  # a step's per-unit handler must not swallow the stop
            result["swallowed"] = True

    start = time.monotonic()
    record = Budget(60).run("s", step, limit_s=0.3, min_start_s=0.1)
    assert time.monotonic() - start < 2 and record.status == "partial" and record.result == {"first": 1.0}
    assert "stopped by its 0.3 s budget" in record.note


def test_a_stop_wrapped_by_another_error_still_counts_as_the_budget() -> None:
    def step(clock: StepClock, result: dict) -> None:
        try:
            raise BudgetSpent("inside a compile")
        except BudgetSpent as err:
            raise RuntimeError("backend compiler failed") from err  # what torch.compile's wrappers do

    assert Budget(60).run("s", step, limit_s=5, min_start_s=0).status == "stopped"


def test_units_that_do_not_fit_are_left_out_and_named() -> None:
    def step(clock: StepClock, result: dict) -> None:
        for index, predicted in enumerate((0.01, 100.0)):
            if clock.fits(f"unit {index}", predicted):
                result[f"unit {index}"] = predicted

    record = Budget(60).run("s", step, limit_s=10, min_start_s=0)
    assert record.status == "partial" and record.result == {"unit 0": 0.01}
    assert "left out: unit 1 (predicted 100.0 s" in record.note


def test_budget_skips_failures_and_step_skips() -> None:
    now = [0.0]
    budget = Budget(100, now=lambda: now[0])
    now[0] = 95.0
    skipped = budget.run("late", lambda clock, result: None, limit_s=50, min_start_s=10)
    assert skipped.status == "skipped" and skipped.budget_s == 5.0 and "under the 10 s" in skipped.note

    def broken(clock: StepClock, result: dict) -> None:
        result["partial"] = 1
        raise ValueError("bad shape")

    failed = Budget(100).run("broken", broken, limit_s=10, min_start_s=0)
    assert failed.status == "failed" and failed.error == "ValueError: bad shape" and failed.result == {"partial": 1}
    assert "in broken" in failed.note
    declined = Budget(100).run("declined", lambda clock, result: clock.skip("nothing to do"), limit_s=10, min_start_s=0)
    assert (declined.status, declined.note) == ("skipped", "nothing to do")


# ---- pure pieces ------------------------------------------------------------------------------------------
def test_runner_plan_runs_the_full_chunk_fewer_steps_or_none() -> None:
    common = dict(requested=35, forward_s=3.0, init_s=50.0, conditioning_s=9.0, decode_s=6.0, overhead_s=30.0)
    full = plan_runner_steps(remaining_s=400.0, **common)
    assert (full.steps, full.predicted_s) == (35, 30 + 50 + 6 + 35 * 6)
    fewer = plan_runner_steps(remaining_s=150.0, **common)
    assert (fewer.steps, fewer.predicted_s) == (10, 86 + 60) and "10 steps run" in fewer.reason
    none = plan_runner_steps(remaining_s=90.0, **common)
    assert none.steps == 0 and "even 2 steps" in none.reason
    unmeasured = plan_runner_steps(requested=35, remaining_s=10.0, forward_s=None, init_s=0, conditioning_s=0,
                                   decode_s=0)
    assert (unmeasured.steps, unmeasured.predicted_s) == (35, None)


def test_kernel_candidates_on_a_hopper_without_packages() -> None:
    env = KernelEnvironment("cuda", torch.bfloat16, 128, capability=(9, 0), cudnn_version=91000)
    entries, refused = kernel_candidates(env)
    assert [e["kernel"] for e in entries] == ["sdpa_cudnn", "sdpa_flash", "sdpa_efficient", "sdpa_math", "sdpa"]
    assert entries[0]["auto"] and entries[0]["options"] == ["auto", "sdpa_cudnn"]
    assert set(refused) == {"flash_attn", "te"} and "flash_attn_interface" in refused["flash_attn"]
    with_fa3 = KernelEnvironment("cuda", torch.bfloat16, 128, capability=(9, 0), cudnn_version=91000,
                                 packages=frozenset({"flash_attn_interface"}))
    entries, refused = kernel_candidates(with_fa3)
    assert entries[0]["kernel"] == "flash_attn_3" and entries[0]["options"] == ["auto", "flash_attn"]
    assert set(refused) == {"te"}


def test_score_matrix_refusal_only_for_the_unfused_kernel_when_it_does_not_fit() -> None:
    free = 139 * GIB
    refusal = score_matrix_refusal("sdpa_math", heads=32, tokens=56_320, dtype=torch.bfloat16, free_bytes=free)
    assert refusal == "materialises 378 GiB of attention scores; 139 GiB are free"
    assert score_matrix_refusal("sdpa_math", heads=4, tokens=32, dtype=torch.bfloat16, free_bytes=free) is None
    assert score_matrix_refusal("sdpa_cudnn", heads=32, tokens=56_320, dtype=torch.bfloat16, free_bytes=1) is None


def test_device_random_init_has_random_dits_distributions() -> None:
    cfg = model_preset("tiny")
    drawn = dict(random_dit_on_device(cfg, seed=3, device=torch.device("cpu"), dtype=torch.bfloat16).named_parameters())
    again = dict(random_dit_on_device(cfg, seed=3, device=torch.device("cpu"), dtype=torch.bfloat16).named_parameters())
    reference = dict(random_dit(cfg, seed=3).named_parameters())
    assert drawn.keys() == reference.keys()
    for name, param in drawn.items():
        ref = reference[name]
        assert param.dtype == torch.bfloat16 and param.shape == ref.shape and torch.equal(param, again[name])
        if bool((ref == 1).all()):
            assert bool((param == 1).all()), name
            continue
        expected_std = ref.float().std().item()
        assert param.float().std().item() == pytest.approx(expected_std, rel=0.25), name
        assert not torch.equal(param.float(), torch.ones_like(param.float())), name


def test_bundle_install_refuses_an_empty_folder_and_a_torch_wheel(tmp_path: Path) -> None:
    script = REPO_ROOT / "benchmarks" / "gpu_bundle_install.sh"
    empty = subprocess.run(["bash", str(script), str(tmp_path), str(tmp_path / "site")], capture_output=True, text=True)
    assert empty.returncode == 2 and "no wheels in" in empty.stderr
    (tmp_path / "torch-2.11.0-cp312-cp312-linux_x86_64.whl").write_bytes(b"not installed")
    torch_wheel = subprocess.run(["bash", str(script), str(tmp_path), str(tmp_path / "site")], capture_output=True,
                                 text=True)
    assert torch_wheel.returncode == 2 and "refusing" in torch_wheel.stderr and not (tmp_path / "site").exists()


def _context(tmp_path: Path, **measured: object) -> CheckContext:
    ctx = CheckContext(shapes=SMOKE, device=torch.device("cpu"), dtype=torch.bfloat16, seed=0, out_dir=tmp_path,
                       work_dir=tmp_path)
    for name, value in measured.items():
        setattr(ctx, name, value)
    return ctx


def test_forwards_predicted_over_the_budget_are_left_out_not_started(tmp_path: Path) -> None:
    ctx = _context(tmp_path, matmul_flops_per_s=1.0)  # a ceiling of 1 FLOP/s predicts every forward at years
    record = Budget(60).run("dit_forward", functools.partial(step_dit_forward, ctx), limit_s=60, min_start_s=0)
    kernels = record.result["kernels"]
    assert record.status == "partial" and [k["status"] for k in kernels] == ["left_out"] * 3
    assert all(k["forward_s"] == [] and k["warmup_s"] is None for k in kernels)
    assert record.note.count("forward 1 (predicted") == 3 and ctx.model is not None and ctx.eager_best_s == {}


def test_runner_chunk_is_not_started_when_two_steps_do_not_fit(tmp_path: Path) -> None:
    ctx = _context(tmp_path, auto_kernel="sdpa", eager_best_s={"sdpa": 1e6})
    record = Budget(60).run("runner_chunk", functools.partial(step_runner_chunk, ctx), limit_s=60, min_start_s=0)
    assert record.status == "skipped" and record.result["steps_run"] == 0 and record.result["command"] is None
    assert "runner chunk not started: even 2 steps are predicted at" in record.note
    assert not (tmp_path / "runner_log.txt").exists()
