"""The session's T5: built on the first prompt that misses the embedding cache, then kept for later videos.

Building T5-11B reads ~20 GB from disk, so a batch must not rebuild it per video (what a per-call encoder
would do). It lives on the compute device, or on the CPU between uses with ``runtime.offload=true``.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

from gen3c_dist.conditioning.text import T5PromptEncoder
from gen3c_dist.runner.offload import DeviceSwap


class SessionTextEncoder:
    """``open()`` lends the session's T5 (see :data:`gen3c_dist.conditioning.text.EncoderOpener`)."""

    def __init__(self, t5_dir: Optional[str], swap: DeviceSwap) -> None:
        self.t5_dir, self.swap = t5_dir, swap
        self.encoder: Optional[T5PromptEncoder] = None

    @contextlib.contextmanager
    def open(self) -> Iterator[T5PromptEncoder]:
        if self.encoder is None:
            from gen3c_dist.conditioning.text import resolve_t5_dir

            self.encoder = T5PromptEncoder(resolve_t5_dir(self.t5_dir), self.swap.home)
        with self.swap.use("t5", self.encoder.model):
            self.encoder.device = self.swap.compute  # token ids go where the model now is
            try:
                yield self.encoder
            finally:
                self.encoder.device = self.swap.home
