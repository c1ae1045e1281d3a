"""Helpers for runner tests: compose the real Hydra presets, run in-process or under torchrun."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gen3c_dist.conditioning.video_conditioner import VideoConditioner
from gen3c_dist.config import RunConfig

REPO = Path(__file__).resolve().parents[1]
# The demo shrunk for CI: same scene, pipeline and code paths, fewer pixels and steps.
FAST_DEMO = ["input.height=64", "input.width=96", "sampler.steps=3", "runtime.progress=false"]


def compose(config_name: str, overrides: list[str]) -> RunConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from gen3c_dist.config import register_configs
    from gen3c_dist.run import CONF_DIR, _register_resolvers, to_run_config

    register_configs()
    _register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return to_run_config(hydra_compose(config_name=config_name, overrides=overrides))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cli(args: list[str], *, nproc: int = 1, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m gen3c_dist.run ARGS``, or the same under torchrun with ``nproc`` gloo processes."""
    if nproc == 1:
        cmd = [sys.executable, "-m", "gen3c_dist.run", *args]
    else:
        cmd = [
            sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
            f"--master_port={free_port()}", "-m", "gen3c_dist.run", *args,
        ]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(cmd, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)


def crash_on_chunk(monkeypatch: pytest.MonkeyPatch, chunk: int) -> None:
    """Make the conditioner raise when it reaches ``chunk`` (a crash after the chunks before it completed)."""
    original = VideoConditioner.advance

    def crash(self, chunk_index, last_frame):
        if chunk_index == chunk:
            raise RuntimeError(f"simulated crash before chunk {chunk}")
        return original(self, chunk_index, last_frame)

    monkeypatch.setattr(VideoConditioner, "advance", crash)
