"""A rank failing at any stage of a torchrun job, and Ctrl-C: every rank is gone within seconds, with one line.

The failures are injected by ``tests/fault_entry.py`` (the real entry point with one stage patched to raise on
one rank); the collective timeout stays at its default of 600 s, so a rank that only stopped at a timeout fails
the bound. The bounds (15 s after a failure, 3 s after Ctrl-C) are the issue's; the runs take about 1-4 s here.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from tests.cli_process import CliProcess, _descendants
from tests.runner_utils import FAST_DEMO

FAILURE_BOUND_S = 15.0
INTERRUPT_BOUND_S = 3.0
DEMO = ["--config-name", "demo", *FAST_DEMO]


def runner_traceback(output: str) -> bool:
    """A traceback frame in the runner's code (torchrun's own traceback of a failed job is allowed)."""
    return re.search(r'File "[^"]*/gen3c_dist/[^"]*\.py", line', output) is not None


def _ranks_alive(run: CliProcess, nproc: int) -> set[int]:
    """The rank processes (torchrun's children) once they have all started."""
    run.wait_until(lambda: len([p for p in _descendants(run.proc.pid) if _is_rank(p)]) == nproc, timeout=120)
    return {p for p in _descendants(run.proc.pid) if _is_rank(p)}


def _is_rank(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return b"tests.fault_entry" in cmdline or b"gen3c_dist.run" in cmdline


@pytest.mark.parametrize(
    "nproc, failing_rank, stage",
    [(2, 0, "conditioning"), (2, 1, "conditioning"), (2, 0, "denoise"), (2, 1, "denoise"), (2, 0, "decode"),
     (2, 1, "decode"), (3, 2, "conditioning"), (3, 0, "denoise"), (3, 1, "decode")],
)
def test_a_failing_rank_stops_every_rank_within_seconds(tmp_path: Path, nproc: int, failing_rank: int, stage: str):
    stamp = tmp_path / "failed_at"
    run = CliProcess([*DEMO, f"output.dir={tmp_path / 'out'}"], nproc=nproc, module="tests.fault_entry",
                     env={"GEN3C_TEST_FAIL": f"{failing_rank}:{stage}", "GEN3C_TEST_FAIL_STAMP": str(stamp)})
    try:
        ranks = _ranks_alive(run, nproc)
        ended = run.wait(timeout=200, watch=ranks)
    finally:
        run.kill()
    assert stamp.exists(), f"the failure was never reached:\n{run.output[-3000:]}"
    failed_at = float(stamp.read_text())
    for pid, when in ended.items():
        assert when - failed_at < FAILURE_BOUND_S, f"a rank ran {when - failed_at:.1f} s after the failure"
    assert time.time() - failed_at < FAILURE_BOUND_S + 5  # torchrun itself, once its ranks are gone
    assert run.proc.returncode != 0
    output = run.output
    line = f"[rank {failing_rank}] ERROR gen3c_dist: injected failure in {stage} on rank {failing_rank}"
    assert output.count("injected failure in") == 1 and line in output, output[-3000:]
    for peer in set(range(nproc)) - {failing_rank}:
        peer_line = (f"[rank {peer}] ERROR gen3c_dist: rank {peer} stopped because rank {failing_rank} failed "
                     f"(its error is printed by rank {failing_rank})")
        assert output.count(peer_line) == 1, output[-3000:]
    assert not runner_traceback(output), output[-3000:]
    assert not (tmp_path / "out" / "demo.mp4").exists()


def _moge_checkpoint_with_a_pickled_object(path: Path) -> Path:
    import argparse

    import torch

    torch.save({"model_config": {}, "model": {}, "args": argparse.Namespace(lr=1)}, path)
    return path


@pytest.mark.parametrize("case", ["depth_size", "moge_pickle"])
def test_the_two_reported_hangs_end_every_rank_with_one_clear_line(tmp_path: Path, case: str):
    """The issue's two torchrun hangs: a depth file of the wrong size, a MoGe checkpoint the safe loader refuses."""
    import numpy as np

    if case == "depth_size":
        depth = tmp_path / "depth100.npz"
        np.savez(depth, depth=np.ones((100, 100)), intrinsics=np.array([[50.0, 0, 50], [0, 50, 50], [0, 0, 1]]))
        extra = [f"input.depth={depth}"]
        message = (f"depth file {depth}: depth is 100x100 but the input image .*demo_scene.png is 384x256; "
                   "they must be pixel-aligned")
    else:
        moge = _moge_checkpoint_with_a_pickled_object(tmp_path / "moge.pt")
        extra = ["input.depth=null", f"checkpoints.moge={moge}"]
        message = (f"checkpoints.moge {moge}: holds pickled Python objects besides tensors \\(argparse.Namespace\\); "
                   "the loader never unpickles them")
    start = time.time()
    run = CliProcess([*DEMO, f"output.dir={tmp_path / 'out'}", "parallel.ring=2", *extra], nproc=2)
    try:
        run.wait(timeout=200)
    finally:
        run.kill()
    assert time.time() - start < 60, "the job waited for a timeout"  # the old hang: 600 s
    assert run.proc.returncode != 0
    lines = [line for _, line in run.lines if re.search(message, line)]
    if case == "depth_size":  # found by every rank's input checks, before any model loads
        assert sorted(line.split("]")[0] for line in lines) == ["[rank 0", "[rank 1"], run.output[-3000:]
        assert "DiT: seeded random weights" not in run.output
    else:  # found by the lead while it loads MoGe: its line once, and rank 1 says why it stopped
        assert len(lines) == 1 and lines[0].startswith("[rank 0] ERROR"), run.output[-3000:]
        assert "[rank 1] ERROR gen3c_dist: rank 1 stopped because rank 0 failed" in run.output
    assert "weights_only" not in run.output and not runner_traceback(run.output)


# ---- Ctrl-C ---------------------------------------------------------------------------------------------------
def _state_file(out: Path) -> Path:
    return out / "demo.partial" / "state.safetensors"


@pytest.mark.parametrize("nproc", [1, 2])
def test_ctrl_c_stops_every_rank_within_3_s_and_says_what_was_kept(tmp_path: Path, nproc: int):
    from gen3c_dist.runner.resume import PartialState

    out = tmp_path / "out"
    run = CliProcess([*DEMO, "input.num_frames=361", "sampler.steps=12", f"output.dir={out}"], nproc=nproc)
    try:
        run.wait_until(lambda: _state_file(out).exists(), timeout=240)  # chunk 1 of 3 is saved
        ranks = {run.proc.pid} if nproc == 1 else {pid for pid in _descendants(run.proc.pid) if _is_rank(pid)}
        assert len(ranks) == nproc
        sent, _ = run.interrupt()
        ended = run.wait(timeout=60, watch=ranks)
    finally:
        run.kill()
    for pid, when in ended.items():
        assert when - sent < INTERRUPT_BOUND_S, f"rank process {pid} ran {when - sent:.2f} s after Ctrl-C"
    # torchrun itself exits once its ranks are gone; its own teardown took about a second here
    assert time.time() - sent < INTERRUPT_BOUND_S + 3
    assert run.proc.returncode != 0
    saved = PartialState(out / "demo", "").chunks_saved()
    kept = [line for _, line in run.lines if "interrupted:" in line]
    assert kept == [f"[rank 0] WARNING gen3c_dist: interrupted: demo: chunk {saved} of 3 saved; rerun the same "
                    "command to continue"], run.output[-3000:]
    assert saved >= 1 and not (out / "demo.mp4").exists()
    assert "Traceback" not in run.output or nproc > 1  # torchrun prints its own on SIGINT
    assert not runner_traceback(run.output), run.output[-3000:]
    if nproc == 1:
        assert run.proc.returncode == 130
        assert not [p for p in os.listdir(out) if ".tmp-" in p], os.listdir(out)


@pytest.mark.parametrize("nproc, failing_rank, stage", [(3, 2, "denoise")])  # two peers, neither the lead
def test_a_bug_keeps_its_traceback_and_torchrun_names_the_failing_rank(tmp_path: Path, nproc: int,
                                                                       failing_rank: int, stage: str):
    """Not a bad input but a bug (a RuntimeError on a rank other than 0): its traceback is printed, each peer
    says once why it stopped, and torchrun's error record gives the failing rank as the root cause, though the
    peers exit first (a tie in torchrun's whole-second timestamps used to name rank 0)."""
    run = CliProcess([*DEMO, f"output.dir={tmp_path / 'out'}"], nproc=nproc, module="tests.fault_entry",
                     env={"GEN3C_TEST_FAIL": f"{failing_rank}:{stage}", "GEN3C_TEST_FAIL_KIND": "bug"})
    try:
        run.wait(timeout=200)
    finally:
        run.kill()
    output, error = run.output, f"RuntimeError: injected failure in {stage} on rank {failing_rank}"
    assert run.proc.returncode != 0
    assert runner_traceback(output) and error in output, output[-3000:]
    root_cause = output.split("Root Cause (first observed failure):", 1)
    assert len(root_cause) == 2, output[-3000:]
    record = root_cause[1].split("=" * 20, 1)[0]
    assert re.search(rf"rank\s*:\s*{failing_rank} \(local_rank: {failing_rank}\)", record), record
    assert "tests/fault_entry.py" in record and error in record, record  # the record holds the traceback
    for peer in set(range(nproc)) - {failing_rank}:
        peer_line = (f"[rank {peer}] ERROR gen3c_dist: rank {peer} stopped because rank {failing_rank} failed "
                     f"(its error is printed by rank {failing_rank})")
        assert output.count(peer_line) == 1, output[-3000:]
    assert not (tmp_path / "out" / "demo.mp4").exists()
