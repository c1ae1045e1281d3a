"""Test-wide settings: no network, and one thread per process (multi-process tests share 2 CPU cores)."""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def single_thread():
    """Single-threaded like the ranks: on a loaded 2-core CI box, two spinning OpenMP threads run 100x slower.

    Modules whose tests compare against gloo ranks use it with ``pytestmark = pytest.mark.usefixtures(...)``.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def mode_inputs(tmp_path_factory):
    """The runner tests' video source (241 frames) and multi-view npz (4 views, a 241-frame path) at 64x96,
    written once per session so that the video and multi-view test modules share their reference runs."""
    from types import SimpleNamespace

    from tests.mode_utils import write_multiview_npz, write_video_source

    root = tmp_path_factory.mktemp("mode_inputs")
    return SimpleNamespace(video=write_video_source(root / "video"), key_frames=write_multiview_npz(root / "scene.npz"))


@pytest.fixture(scope="session")
def cli_reference(tmp_path_factory):
    """Single-process CLI latents per (arguments, output name), each run once per session."""
    from tests.mode_utils import cli_latents

    cache: dict[tuple, dict] = {}

    def reference(args: list[str], name: str) -> dict:
        key = (tuple(args), name)
        if key not in cache:
            cache[key] = cli_latents(list(args), tmp_path_factory.mktemp("reference"), name=name)
        return cache[key]

    return reference
