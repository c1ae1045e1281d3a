"""``python -m gen3c_dist.plan``: the dry run prints what auto would choose, the alternatives and memory."""

from __future__ import annotations

import re
import subprocess
import sys

from gen3c_dist.config import model_preset
from gen3c_dist.plan import main
from tests.runner_utils import REPO


def test_plan_for_one_node_of_8(capsys):
    assert main(["--world-size", "8", "--ranks-per-node", "8"]) == 0
    out = capsys.readouterr().out
    assert "parallel.layout=auto chooses: world 8 = data 1 x cfg 2 x ulysses 4 x ring 1" in out
    chosen = [line for line in out.splitlines() if line.startswith("*")]
    assert len(chosen) == 1 and chosen[0].split()[1:5] == ["1", "2", "4", "1"]
    # bytes per step of the chosen row: the exact formula (cfg exchange + Ulysses all-to-all + output gather), bf16
    assert chosen[0].split()[-1] == "9,701,457,920"
    # DiT weights: 7,237,257,216 parameters in bf16
    assert f"DiT weights {7_237_257_216 * 2 / 1024**3:.2f}" in out
    assert "Process groups built on the fake backend for 8 of 8 ranks: ok" in out


def test_plan_for_a_batch_on_the_demo(tmp_path, capsys):
    image = str(REPO / "gen3c_dist" / "assets" / "demo_scene.png")
    (tmp_path / "b.jsonl").write_text("\n".join(f'{{"image": "{image}", "name": "v{i}"}}' for i in range(4)) + "\n")
    assert main(["--world-size", "4", "--config-name", "demo", f"batch.jsonl={tmp_path / 'b.jsonl'}"]) == 0
    out = capsys.readouterr().out
    assert "4 video(s), 4 chunk(s)" in out
    match = re.search(r"chooses: world 4 = data (\d) x cfg (\d) x ulysses (\d) x ring (\d)", out)
    assert match is not None
    data, cfg, ulysses, ring = (int(g) for g in match.groups())
    assert data * cfg * ulysses * ring == 4 and model_preset("tiny").num_heads % ulysses == 0
    assert "Process groups built on the fake backend for 4 of 4 ranks: ok" in out


def test_plan_refuses_a_layout_that_cannot_fit_with_one_line():
    result = subprocess.run([sys.executable, "-m", "gen3c_dist.plan", "--world-size", "2", "parallel.ulysses=3",
                             "parallel.layout=explicit"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("gen3c_dist.plan: world size 2 is not a multiple of")
    assert "Traceback" not in result.stderr
