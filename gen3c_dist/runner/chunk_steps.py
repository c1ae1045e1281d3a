"""Where a chunk's conditioning and decoding run within a replica (``parallel.tokenizer``).

* ``lead`` (the official placement): the lead renders the cache, runs every tokenizer encode and the decode
  alone; the other ranks receive the :class:`ChunkConditioning` in one broadcast and wait for it.
* ``group``: the lead still owns depth, the cache and text, but the chunk's 1 + 2 * n_buf encodes are spread
  over the replica's ranks and the decode runs sequence-parallel across them
  (:mod:`gen3c_dist.parallel.tokenizer_parallel`); results equal the lead-only path.

Both implement :class:`gen3c_dist.runner.video.ChunkSteps` and are called on every rank of the replica.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch

from gen3c_dist.config import RunConfig
from gen3c_dist.runner.conditioning_stage import ChunkConditioning, VideoConditioner, conditioning_shapes
from gen3c_dist.runner.offload import DeviceSwap
from gen3c_dist.runner.timing import StageTimer
from gen3c_dist.model.tokenizer.video_tokenizer import VideoTokenizer

Broadcast = Callable[[Optional[ChunkConditioning]], ChunkConditioning]


def conditioning_broadcaster(cfg: RunConfig, *, group, src: int, size: int, device: torch.device, dtype: torch.dtype) -> Broadcast:
    """Lead -> replica, one typed broadcast whose shapes every rank derives from the config."""
    if group is None or size == 1:
        return lambda cond: cond  # type: ignore[return-value]
    from gen3c_dist.parallel.broadcast import broadcast_tensors

    shapes = conditioning_shapes(cfg.model, height=cfg.input.height, width=cfg.input.width, text_length=cfg.text.max_length)
    spec = {name: (shape, dtype) for name, shape in shapes.items()}

    def broadcast(cond: Optional[ChunkConditioning]) -> ChunkConditioning:
        tensors = broadcast_tensors(None if cond is None else cond.as_dict(), spec, group=group, src=src, device=device)
        return ChunkConditioning(**tensors)

    return broadcast


class LeadChunkSteps:
    def __init__(self, *, conditioner: Optional[VideoConditioner], tokenizer: Optional[VideoTokenizer],
                 swap: Optional[DeviceSwap], broadcast: Broadcast, timer: StageTimer) -> None:
        self.conditioner, self.tokenizer, self.swap = conditioner, tokenizer, swap
        self.broadcast, self.timer = broadcast, timer

    def condition(self, chunk_index: int, last_frame_HW3: Optional[torch.Tensor]) -> ChunkConditioning:
        cond = None
        if self.conditioner is not None:
            cond = self.conditioner.chunk(chunk_index, last_frame_HW3)  # times "conditioning" and "encode"
        with self.timer.stage("broadcast"):
            return self.broadcast(cond)

    def decode(self, latent_BCTHW: torch.Tensor) -> Optional[np.ndarray]:
        if self.tokenizer is None or self.swap is None:
            return None
        with self.timer.stage("decode"), self.swap.use_tokenizer(self.tokenizer, "decoder") as tokenizer:
            return tokenizer.decode_to_uint8(latent_BCTHW).cpu().numpy()
