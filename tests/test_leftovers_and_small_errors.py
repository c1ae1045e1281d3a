"""Leftovers of killed runs, batches under torchrun, intrinsics for a depth file, a folder as the image, modes."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gen3c_dist.errors import InputError
from gen3c_dist.runner.leftovers import stale_temporaries, temporary_name
from gen3c_dist.runner.session import run_session
from tests.runner_utils import FAST_DEMO, compose, run_cli


def demo(out: Path, *extra: str):
    return compose("demo", [*FAST_DEMO, f"output.dir={out}", *extra])


def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_start_removes_the_temporaries_of_ended_runs_on_this_host_only(tmp_path: Path, capsys):
    out = tmp_path / "out"
    (out / "old.partial").mkdir(parents=True)
    pid = dead_pid()
    mine = temporary_name("x", ".mp4")
    dead = [out / mine.replace(f"-{os.getpid()}.", f"-{pid}."),
            out / "old.partial" / temporary_name("chunk0", ".safetensors").replace(f"-{os.getpid()}.", f"-{pid}.")]
    alive = out / mine  # this process: running
    other_host = out / f".x.tmp-someotherhost-{pid}.mp4"  # another host's pid says nothing here
    ours_not = out / ".notes.tmp.txt"
    for path in [*dead, alive, other_host, ours_not]:
        path.write_bytes(b"partial")
    assert sorted(stale_temporaries(out)) == sorted(dead)
    assert run_session(demo(out)) == 0
    assert not any(p.exists() for p in dead) and alive.exists() and other_host.exists() and ours_not.exists()
    lines = [line for line in capsys.readouterr().err.splitlines() if "temporary file" in line]
    assert lines == [f"[rank 0] INFO gen3c_dist: removed 2 temporary files left in {out} by runs that are no longer running: "
                     f"{dead[0].name}, old.partial/{dead[1].name}"]


def test_every_file_follows_the_umask(tmp_path: Path):
    assert run_session(demo(tmp_path, "output.save_latents=true")) == 0
    expected = 0o666 & ~_umask()
    for name in ("demo.mp4", "demo_cache.mp4", "demo.json", "demo_latents.safetensors"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == expected, name


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_folder_given_as_the_image_is_called_a_folder(tmp_path: Path):
    with pytest.raises(InputError, match=rf"^input.image {tmp_path}: is a folder; give the path of an image file$"):
        run_session(demo(tmp_path / "out", f"input.image={tmp_path}"))


def _depth_npy(tmp_path: Path) -> Path:
    scene = np.load(compose("demo", []).input.depth)
    path = tmp_path / "depth.npy"
    np.save(path, scene["depth"])
    np.save(tmp_path / "K.npy", scene["intrinsics"])
    return path


def test_input_intrinsics_gives_a_npy_depth_its_intrinsics(tmp_path: Path):
    depth = _depth_npy(tmp_path)
    with pytest.raises(InputError, match="no intrinsics found; give intrinsics as an .npz key 'intrinsics', a file "
                                         "named by `input.intrinsics`"):
        run_session(demo(tmp_path / "a", f"input.depth={depth}"))
    assert run_session(demo(tmp_path / "b", f"input.depth={depth}", f"input.intrinsics={tmp_path / 'K.npy'}")) == 0
    reference = tmp_path / "ref"
    assert run_session(demo(reference, "output.save_latents=true")) == 0
    assert run_session(demo(tmp_path / "c", f"input.depth={depth}", f"input.intrinsics={tmp_path / 'K.npy'}",
                            "output.save_latents=true")) == 0
    from safetensors.torch import load_file

    import torch

    same = load_file(str(reference / "demo_latents.safetensors")), load_file(str(tmp_path / "c" / "demo_latents.safetensors"))
    assert torch.equal(same[0]["chunk0"], same[1]["chunk0"])  # the .npz scene and its .npy + K are one input


def test_a_batch_with_bad_lines_under_torchrun_makes_the_good_ones_and_exits_1(tmp_path: Path):
    image = compose("demo", []).input.image
    lines = [{"image": image, "name": "good"}, {"image": image, "name": "typo", "colour": "red"},
             {"image": "/missing.png", "name": "missing"}]
    jsonl = tmp_path / "batch.jsonl"
    jsonl.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    out = tmp_path / "out"
    result = run_cli(["--config-name", "demo", *FAST_DEMO, f"output.dir={out}", f"batch.jsonl={jsonl}"], nproc=2)
    assert result.returncode == 1, result.stderr[-3000:]
    assert (out / "good.json").exists() and (out / "good.mp4").exists()
    report = json.loads((out / "batch_report_shard0.json").read_text())["rejected_or_failed"]
    assert [entry["index"] for entry in report] == [1, 2]
    skips = [line for line in result.stderr.splitlines() if "skipping batch line" in line]
    assert len(skips) == 2 and all(line.startswith("[rank 0] ERROR") for line in skips), result.stderr[-3000:]
    assert (f"[rank 0] ERROR gen3c_dist: 2 of 3 batch lines were not made (lines 2, 3); each reason is in "
            f"{out / 'batch_report_shard0.json'}") in result.stderr
    assert result.stderr.index("skipping batch line 3") < result.stderr.index("DiT: seeded random weights")
