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
