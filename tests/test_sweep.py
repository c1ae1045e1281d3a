"""gen3c-sweep: a real tiny sweep (1 and 2 processes), skipped entries, failed and timed-out runs as error rows,
the CSV/JSON/PNG outputs, the Slurm array script, layout naming and defensive record parsing."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from gen3c_dist.perf.grid import GridEntry, GridSpec, expand, layout_degrees
from gen3c_dist.perf.report import COLUMNS, build_row, parse_record
from gen3c_dist.perf.sweep import run

GRID = """
preset: tiny
config_name: demo
resolutions: [32x48]
frames: [121]
steps: [2]
grids:
  - {name: good, world_sizes: [1, 2], layouts: [single, ulysses, hybrid]}
  - {name: bad, world_sizes: [1], layouts: [single], overrides: [input.seed=notanint]}
  - {name: slow, world_sizes: [2], layouts: [cfg], steps: [35], timeout_s: 3}
"""


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    (root / "grid.yaml").write_text(GRID)
    out = root / "out"
    return run(["--grid", str(root / "grid.yaml"), "--out", str(out)]), out


def _rows(out: Path) -> dict[str, dict]:
    return {row["grid"] + ":" + row["layout"]: row for row in json.loads((out / "sweep.json").read_text())["rows"]}


def test_runs_become_rows_with_values(sweep):
    status, out = sweep
    assert status == 0
    rows = _rows(out)
    assert set(rows) == {"good:single", "good:ulysses", "bad:single", "slow:cfg"}
    for key in ("good:single", "good:ulysses"):
        row = rows[key]
        assert row["error"] == "", row["error"]
        assert row["tokens"] == 16 * 2 * 3  # 121 frames at 32x48: latent 16 x 4 x 6, 2x2 patches
        assert row["dit_step_s"] > 0 and row["denoise_s"] > 0 and row["wall_s"] >= row["denoise_s"]
        assert row["conditioning_s"] > 0 and row["decode_s"] > 0 and 0 < row["non_dit_share"] < 1
        assert row["dit_tokens_per_s"] == pytest.approx(96 * 2 / row["dit_step_s"])
        assert row["device"] == "cpu" and row["threads"] == 1 and row["tflops_per_gpu"] is None
    assert rows["good:single"]["comm_bytes_formula"] == 0
    ulysses = rows["good:ulysses"]
    assert (ulysses["world_size"], ulysses["ulysses"], ulysses["ring"], ulysses["cfg"]) == (2, 2, 1, 1)
    # Ulysses 2, fp32: 2 forwards x 2 blocks x 4 x 48 tokens x 128 x 4 B / 2, plus the output gather.
    assert ulysses["comm_bytes_formula"] == 2 * 2 * 4 * 48 * 128 * 4 // 2 + 2 * 48 * 64 * 4
    if ulysses["comm_bytes_per_step"] is not None:  # written by runners that report per-rank traffic
        assert ulysses["comm_bytes_per_step"] == ulysses["comm_bytes_formula"]


def test_failed_and_timed_out_runs_are_error_rows(sweep):
    _, out = sweep
    rows = _rows(out)
    bad, slow = rows["bad:single"], rows["slow:cfg"]
    assert bad["error"].startswith("exit status ") and "seed" in bad["error"] and bad["dit_step_s"] is None
    assert slow["error"].startswith("timed out after 3 s") and slow["dit_step_s"] is None
    status = json.loads(next(out.glob("runs/*_cfg_*/status.json")).read_text())
    assert status["timed_out"] is True
    with pytest.raises(ProcessLookupError):  # torchrun and both ranks are gone with their process group
        os.killpg(status["pid"], 0)


def test_skipped_entries_are_reported_and_outputs_written(sweep):
    _, out = sweep
    data = json.loads((out / "sweep.json").read_text())
    skipped = {(s["layout"], s["world_size"]) for s in data["meta"]["skipped"]}
    assert {("hybrid", 1), ("hybrid", 2), ("ulysses", 1), ("single", 2)} <= skipped
    assert all(s["reason"] for s in data["meta"]["skipped"])
    meta = data["meta"]
    assert meta["hardware"]["cpu_model"] and meta["versions"]["torch"] and len(meta["grids"]) == 3
    good_configs = [c for run_id, c in meta["configs"].items() if "_single_" in run_id and c]
    assert good_configs and good_configs[0]["model"]["num_heads"] == 4
    with open(out / "sweep.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert tuple(table[0]) == COLUMNS and len(table) == 4
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_slurm_mode_writes_one_array_per_node_shape(tmp_path, capsys):
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps({"world_sizes": [1, 2, 16], "layouts": ["single", "ulysses", "ring"], "steps": [2]}))
    assert run(["--grid", str(grid), "--slurm", "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    scripts = {p.name: p.read_text() for p in (tmp_path / "out" / "slurm").glob("*.sbatch")}
    assert set(scripts) == {"sweep_1x1.sbatch", "sweep_1x2.sbatch", "sweep_2x8.sbatch"}  # ulysses 16 > 4 heads
    assert "#SBATCH --array=0-1\n" in scripts["sweep_1x2.sbatch"] and "#SBATCH --array=0-0\n" in scripts["sweep_1x1.sbatch"]
    assert "#SBATCH --nodes=2\n" in scripts["sweep_2x8.sbatch"] and "parallel.ring=16" in scripts["sweep_2x8.sbatch"]
    assert scripts["sweep_1x2.sbatch"] in printed
    assert len(list((tmp_path / "out" / "runs").glob("*/entry.json"))) == 4
    _run_array_task(tmp_path, tmp_path / "out" / "slurm" / "sweep_1x2.sbatch", task=1)


def _run_array_task(tmp_path: Path, script: Path, *, task: int) -> None:
    """Run one array task under bash with stand-ins for srun, scontrol and torchrun (recording their argv)."""
    stubs = tmp_path / "bin"
    stubs.mkdir()
    (stubs / "srun").write_text('#!/usr/bin/env bash\nwhile [[ "$1" == -* ]]; do shift; done\nexec "$@"\n')
    (stubs / "scontrol").write_text("#!/usr/bin/env bash\necho node1\necho node2\n")
    (stubs / "torchrun").write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" > {tmp_path}/torchrun.argv\n')
    for stub in stubs.iterdir():
        stub.chmod(0o755)
    env = {"PATH": f"{stubs}:{os.environ['PATH']}", "SLURM_ARRAY_TASK_ID": str(task), "SLURM_JOB_ID": "7",
           "SLURM_JOB_NODELIST": "node[1-2]", "HOME": str(tmp_path)}
    done = subprocess.run([shutil.which("bash"), str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    argv = (tmp_path / "torchrun.argv").read_text().splitlines()
    assert "--nproc_per_node=2" in argv and "--rdzv-endpoint=node1:20007" in argv
    assert "parallel.ring=2" in argv and argv[argv.index("--config-name") + 1] == "demo"
    run_dir = Path(next(a for a in argv if a.startswith("output.dir=")).split("=", 1)[1])
    assert json.loads((run_dir / "status.json").read_text())["returncode"] == 0


def test_bad_command_lines_raise_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match="--grid cpu-report defines the grid"):
        run(["--grid", "cpu-report", "--world-sizes", "2", "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="neither a preset"):
        run(["--grid", str(tmp_path / "missing.yaml"), "--out", str(tmp_path)])
    with pytest.raises(ValueError, match="KEY=V1,V2"):
        run(["--axis", "runtime.overlap", "--out", str(tmp_path), "--dry-run"])
    (tmp_path / "grid.yaml").write_text("world_size: [2]\n")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['world_size'\]"):
        run(["--grid", str(tmp_path / "grid.yaml"), "--out", str(tmp_path)])


def test_layout_names_map_to_degrees():
    assert layout_degrees("hybrid", 8, num_heads=32) == {"ulysses": 4, "ring": 2, "cfg": 1}
    assert layout_degrees("hybrid", 64, num_heads=32) == {"ulysses": 8, "ring": 8, "cfg": 1}
    assert layout_degrees("cfg+hybrid", 16, num_heads=32) == {"ulysses": 4, "ring": 2, "cfg": 2}
    assert layout_degrees("cfg+ulysses", 4, num_heads=4) == {"ulysses": 2, "ring": 1, "cfg": 2}
    with pytest.raises(ValueError, match="does not divide 4 heads"):
        layout_degrees("ulysses", 3, num_heads=4)
    entries, skipped = expand([GridSpec(world_sizes=[3], layouts=["ulysses", "ring"], repeats=2)])
    assert [e.layout for e in entries] == ["ring", "ring"] and [s["layout"] for s in skipped] == ["ulysses"]
    with pytest.raises(ValueError, match="set by the sweep"):
        GridSpec(overrides=["parallel.ulysses=2"])
    with pytest.raises(ValueError, match="unknown"):
        GridSpec(layouts=["tensor"])


def test_record_parsing_tolerates_missing_and_partial_keys():
    empty = parse_record(None)
    assert empty["tokens"] is None and empty["steps_s"] == [] and empty["peak_memory_bytes"] is None
    parsed = parse_record({
        "stages_s": {"decode": 1.5, "bogus": "x"}, "steps_s": [1, "x", 3],
        "ranks": [{"peak_memory_bytes": 5, "comm_bytes_per_step": {"all_to_all": 3, "gather_output": 2}},
                  {"peak_memory_bytes": 9, "comm_bytes_per_step": {"all_to_all": 4}}, "junk"],
    })
    assert parsed["stages"] == {"decode": 1.5} and parsed["steps_s"] == [1.0, 3.0]
    assert parsed["peak_memory_bytes"] == 9 and parsed["comm_bytes_per_step"] == 5
    assert parse_record({"load_s": {"dit": 2.0, "conditioning_models": 0.5}})["stages"] == {"load": 2.5}
    assert parse_record({"stages_s": {"load": 1.0}, "load_s": {"dit": 2.0}})["stages"] == {"load": 1.0}


def test_cuda_rows_get_tflops_and_mfu_from_the_exact_count():
    entry = GridEntry(run_id="x", grid="g", layout="single", world_size=1, ulysses=1, ring=1, cfg=1,
                      preset="gen3c_cosmos_7b", config_name="demo", height=704, width=1280, frames=121, steps=35,
                      variant="", overrides=(), repeat=0, threads=1, timeout_s=60)
    record = {"device": "cuda:0", "dtype": "bfloat16", "steps_s": [10.0, 10.0, 12.0], "wall_s": 400.0,
              "stages_s": {"denoise": 350.0}}
    row = build_row(entry, {"returncode": 0, "timed_out": False}, record, gpu_name="NVIDIA H100 80GB HBM3")
    assert row["tflops_per_gpu"] == pytest.approx(2 * 2_209_581_600_079_872 / 10.0 / 1e12)
    assert row["mfu"] == pytest.approx(row["tflops_per_gpu"] / 989.0)
    assert row["non_dit_share"] == pytest.approx(50 / 400) and row["error"] == ""
