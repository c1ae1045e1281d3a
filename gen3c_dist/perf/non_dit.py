"""GEN3C's work outside the DiT per 121-frame chunk, and what sharing the tokenizer over a replica saves.

ASSUMPTIONS (no GPU timing was possible here; replace them with the sweep's stage times on your hardware):

* ``encode_s`` + ``decode_s`` = 10 s on one H100: the tokenizer share of the 20 s non-DiT estimate of
  :mod:`gen3c_dist.perf.projection`, split in proportion to this repo's exact CV8x8x8 FLOP counts at
  704x1280 (encode 35.7 TFLOP : decode 61.3 TFLOP), i.e. 3.7 s per encode and 6.3 s per decode.
* ``lead_serial_s`` = 4 s: MoGe on the input image, rendering the cache for 121 frames, T5 on a cache miss and
  the mp4 write. It stays on the lead (``runtime.overlap`` hides part of the write; not modelled).
* Chunk 0 has one cache buffer, so 1 + 2 x 1 = 3 encodes (5 for later chunks with two buffers).

Placement (:mod:`gen3c_dist.runner.chunks`): ``lead`` runs every encode and the decode on the lead, as the
official code does; ``group`` gives each of the replica's ranks whole encodes (the slowest rank does
``ceil(encodes / ranks)`` of them) and splits the decode's 16 latent frames across up to 16 ranks.
"""

from __future__ import annotations

import dataclasses
import math

LATENT_FRAMES = 16
PLACEMENTS = ("group", "lead")


@dataclasses.dataclass(frozen=True)
class NonDiTModel:
    lead_serial_s: float = 4.0
    encode_s: float = 3.7
    decode_s: float = 6.3
    encodes: int = 3
    tokenizer: str = "group"

    def __post_init__(self) -> None:
        if self.tokenizer not in PLACEMENTS:
            raise ValueError(f"tokenizer placement {self.tokenizer!r} is not one of {PLACEMENTS}")

    def seconds(self, replica_size: int) -> float:
        """Seconds per chunk outside the DiT for a replica of ``replica_size`` GPUs."""
        if self.tokenizer == "lead" or replica_size == 1:
            return self.lead_serial_s + self.encodes * self.encode_s + self.decode_s
        encode_rounds = math.ceil(self.encodes / min(replica_size, self.encodes))
        return self.lead_serial_s + encode_rounds * self.encode_s + self.decode_s / min(replica_size, LATENT_FRAMES)
