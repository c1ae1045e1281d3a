"""Test-wide settings: no network, and one thread per process (multi-process tests share 2 CPU cores)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
