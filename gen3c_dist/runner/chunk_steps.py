"""Where a chunk's conditioning and decoding run within a replica (``parallel.tokenizer``).

* ``lead`` (the official placement): the lead renders the cache, runs every tokenizer encode and the decode
  alone; the other ranks receive the :class:`ChunkConditioning` in one broadcast and wait for it.
* ``group``: the lead still owns depth, the cache and text, but the chunk's cache render is split over the
  replica's ranks (:mod:`gen3c_dist.parallel.render_parallel`, bit-identical), its 1 + 2 * n_buf encodes are
  spread over them (:mod:`gen3c_dist.parallel.tokenizer_parallel`, bit-identical) and the decode runs
  sequence-parallel across them (:mod:`gen3c_dist.parallel.decode_parallel`, equal to fp32 rounding).

Both implement :class:`gen3c_dist.runner.video.ChunkSteps` and are called on every rank of the replica.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch

from gen3c_dist.config import RunConfig
from gen3c_dist.parallel.comm_counter import CommCounter
from gen3c_dist.runner.conditioning_stage import (
    ChunkConditioning,
    ChunkInputs,
    VideoConditioner,
    assemble_conditioning,
    conditioning_shapes,
)
from gen3c_dist.runner.jobs import CHUNK_FRAMES
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


class GroupChunkSteps:
    """``parallel.tokenizer=group``: the replica shares the chunk's encodes and its decode.

    The lead prepares the tokenizer inputs (depth, cache render, text), shares the buffer count, and every rank
    takes its share of the encodes and receives every latent; only the text embeddings are then broadcast.
    Called on every rank of the replica in the same order; every rank holds the tokenizer.
    """

    def __init__(self, cfg: RunConfig, *, conditioner: Optional[VideoConditioner], tokenizer: VideoTokenizer,
                 swap: DeviceSwap, group, src: int, share_int: Callable[[Optional[int]], int], device: torch.device,
                 dtype: torch.dtype, timer: StageTimer, counter: Optional[CommCounter] = None) -> None:
        self.cfg, self.conditioner, self.tokenizer, self.swap = cfg, conditioner, tokenizer, swap
        self.group, self.src, self.share_int = group, src, share_int
        self.device, self.dtype, self.timer, self.counter = device, dtype, timer, counter

    def _specs(self, chunk_index: int, buffers: int) -> list[tuple[tuple[int, ...], torch.dtype]]:
        """Shapes and dtypes of the chunk's encode inputs, known on every rank from the config and ``buffers``."""
        shape = (1, 3, CHUNK_FRAMES, self.cfg.input.height, self.cfg.input.width)
        # Chunk 0's frame comes from the image in the tokenizer dtype; later ones are float32 (spec 1.6).
        first = self.tokenizer.dtype if chunk_index == 0 else torch.float32
        return [(shape, first)] + [(shape, self.tokenizer.dtype)] * (2 * buffers)

    def condition(self, chunk_index: int, last_frame_HW3: Optional[torch.Tensor]) -> ChunkConditioning:
        from gen3c_dist.parallel.broadcast import broadcast_tensors
        from gen3c_dist.parallel.tokenizer_parallel import encode_distributed

        inputs = self._prepare(chunk_index, last_frame_HW3)
        with self.timer.stage("encode"):
            videos = None if inputs is None else inputs.videos
            buffers = self.share_int(None if videos is None else (len(videos) - 1) // 2)
            with self.swap.use_tokenizer(self.tokenizer, "encoder") as tokenizer:
                latents = encode_distributed(tokenizer, videos, self._specs(chunk_index, buffers), group=self.group,
                                             src=self.src, counter=self.counter)
        with self.timer.stage("broadcast"):
            shapes = conditioning_shapes(self.cfg.model, height=self.cfg.input.height, width=self.cfg.input.width,
                                         text_length=self.cfg.text.max_length)
            text_spec = {name: (shapes[name], self.dtype) for name in ("text_cond", "text_uncond")}
            text = None if inputs is None else {"text_cond": inputs.text_cond, "text_uncond": inputs.text_uncond}
            text = broadcast_tensors(text, text_spec, group=self.group, src=self.src, device=self.device)
        latents = [latent.to(self.device) for latent in latents]
        return assemble_conditioning(latents, self.cfg.model.frame_buffer_max, self.dtype, text["text_cond"], text["text_uncond"])

    def _prepare(self, chunk_index: int, last_frame_HW3: Optional[torch.Tensor]) -> Optional[ChunkInputs]:
        """The lead advances its cache; the replica renders the chunk's cameras together; the lead builds the inputs."""
        from gen3c_dist.parallel.render_parallel import render_distributed

        conditioner = self.conditioner
        cache = w2cs_1F44 = Ks_1F33 = None
        if conditioner is not None:
            with self.timer.stage("conditioning"):
                conditioner.advance(chunk_index, last_frame_HW3)
                cache = conditioner.cache
                w2cs_1F44, Ks_1F33 = conditioner.chunk_cameras(chunk_index)
        with self.timer.stage("render"):
            warps, masks = render_distributed(cache, w2cs_1F44, Ks_1F33, group=self.group, src=self.src,
                                              device=self.device if cache is None else cache.device, counter=self.counter)
        if conditioner is None:
            return None
        with self.timer.stage("conditioning"):
            return conditioner.tokenizer_inputs(chunk_index, warps, masks, last_frame_HW3)

    def decode(self, latent_BCTHW: torch.Tensor) -> Optional[np.ndarray]:
        from gen3c_dist.parallel.decode_parallel import decode_to_uint8_distributed

        with self.timer.stage("decode"), self.swap.use_tokenizer(self.tokenizer, "decoder") as tokenizer:
            frames = decode_to_uint8_distributed(tokenizer, latent_BCTHW, group=self.group, dst=self.src, counter=self.counter)
        return None if frames is None else frames.cpu().numpy()
