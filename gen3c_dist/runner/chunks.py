"""Where a chunk's conditioning and decoding run within a replica (``parallel.tokenizer``).

* ``lead`` (the official placement): the lead renders the cache, runs every tokenizer encode and the decode
  alone; the other ranks receive the :class:`ChunkConditioning` in one broadcast and wait for it.
* ``group``: the lead still owns depth, the cache and text, but the chunk's cache render is split over the
  replica's ranks (:mod:`gen3c_dist.parallel.render_parallel`, bit-identical), its 1 + 2 * n_buf encodes are
  spread over them (:mod:`gen3c_dist.parallel.tokenizer_parallel`, bit-identical) and the decode runs
  sequence-parallel across them (:mod:`gen3c_dist.parallel.decode_parallel`, equal to fp32 rounding).

Both are called on every rank of the replica, in the same order, and time their stages in the video's timer.
"""

from __future__ import annotations

from typing import Optional, Protocol

import numpy as np
import torch

from gen3c_dist.conditioning.video_conditioner import (
    ChunkConditioning,
    ChunkInputs,
    ConditioningModels,
    VideoConditioner,
    assemble_conditioning,
    conditioning_shapes,
)
from gen3c_dist.config import RunConfig
from gen3c_dist.parallel.broadcast import broadcast_tensors
from gen3c_dist.parallel.decode_parallel import decode_to_uint8_distributed
from gen3c_dist.parallel.render_parallel import render_distributed
from gen3c_dist.parallel.tokenizer_parallel import encode_distributed
from gen3c_dist.runner.replica import Replica
from gen3c_dist.runner.timing import StageTimer
from gen3c_dist.shapes import CHUNK_FRAMES

CONDITION_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # what a chunk's condition video can be in


class ChunkSteps(Protocol):
    """How the replica conditions and decodes a chunk; called on every rank of the replica, in the same order."""

    def condition(self, chunk_index: int, last_frame_HW3: Optional[torch.Tensor]) -> ChunkConditioning: ...

    def decode(self, latent_BCTHW: torch.Tensor) -> Optional[np.ndarray]:
        """uint8 frames [121, H, W, 3] on the lead, None elsewhere."""


class _Steps:
    def __init__(self, cfg: RunConfig, replica: Replica, *, conditioner: Optional[VideoConditioner],
                 models: Optional[ConditioningModels], timer: StageTimer) -> None:
        self.cfg, self.replica, self.conditioner, self.models, self.timer = cfg, replica, conditioner, models, timer
        self.device, self.dtype = replica.settings.device, replica.settings.dtype
        self.src = replica.layout.replica_lead

    def _spec(self, names: tuple[str, ...]) -> dict:
        shapes = conditioning_shapes(self.cfg.model, height=self.cfg.input.height, width=self.cfg.input.width,
                                     text_length=self.cfg.text.max_length)
        return {name: (shapes[name], self.dtype) for name in names}


class LeadChunkSteps(_Steps):
    """``parallel.tokenizer=lead``: the lead conditions and decodes; the others receive one typed broadcast."""

    def condition(self, chunk_index: int, last_frame_HW3: Optional[torch.Tensor]) -> ChunkConditioning:
        cond = None
        if self.conditioner is not None:
            with self.timer.stage("conditioning"):
                inputs = self.conditioner.prepare(chunk_index, last_frame_HW3)
            with self.timer.stage("encode"):
                cond = self.conditioner.encode(inputs)
        with self.timer.stage("broadcast"):
            if self.replica.group is None:
                return cond  # type: ignore[return-value]
            spec = self._spec(("gt_latent", "pose", "text_cond", "text_uncond"))
            tensors = broadcast_tensors(None if cond is None else cond.as_dict(), spec, group=self.replica.group,
                                        src=self.src, device=self.device)
            return ChunkConditioning(**tensors)

    def decode(self, latent_BCTHW: torch.Tensor) -> Optional[np.ndarray]:
        if self.models is None:
            return None
        with self.timer.stage("decode"), self.models.placement.use_tokenizer(self.models.tokenizer, "decoder") as tok:
            return tok.decode_to_uint8(latent_BCTHW).cpu().numpy()


class GroupChunkSteps(_Steps):
    """``parallel.tokenizer=group``: the replica shares the chunk's render, its encodes and its decode.

    The lead prepares the tokenizer inputs (depth, cache, text), shares the buffer count, and every rank takes
    its share of the encodes and receives every latent; only the text embeddings are then broadcast. Every rank
    holds the tokenizer.
    """

    def _encode_specs(self, first_dtype: torch.dtype, buffers: int) -> list[tuple[tuple[int, ...], torch.dtype]]:
        """Shapes and dtypes of the chunk's encode inputs, known on every rank from the config and what the lead
        shared: the condition video's dtype and ``buffers``."""
        shape = (1, 3, CHUNK_FRAMES, self.cfg.input.height, self.cfg.input.width)
        return [(shape, first_dtype)] + [(shape, self.models.tokenizer.dtype)] * (2 * buffers)

    def condition(self, chunk_index: int, last_frame_HW3: Optional[torch.Tensor]) -> ChunkConditioning:
        inputs = self._prepare(chunk_index, last_frame_HW3)
        counter = self.replica.tokenizer_counter
        with self.timer.stage("encode"):
            videos = None if inputs is None else inputs.videos
            buffers = self.replica.share_int(None if videos is None else (len(videos) - 1) // 2)
            # The condition frame's dtype depends on the job and the chunk (CacheSource.first_frame): an image is
            # in the tokenizer dtype, a source tensor or a decoded frame float32 (spec 1.6).
            first = CONDITION_DTYPES[self.replica.share_int(
                None if videos is None else CONDITION_DTYPES.index(videos[0].dtype))]
            with self.models.placement.use_tokenizer(self.models.tokenizer, "encoder") as tokenizer:
                latents = encode_distributed(tokenizer, videos, self._encode_specs(first, buffers),
                                             group=self.replica.group, src=self.src, counter=counter)
        with self.timer.stage("broadcast"):
            text = None if inputs is None else {"text_cond": inputs.text_cond, "text_uncond": inputs.text_uncond}
            text = broadcast_tensors(text, self._spec(("text_cond", "text_uncond")), group=self.replica.group,
                                     src=self.src, device=self.device)
        latents = [latent.to(self.device) for latent in latents]
        return assemble_conditioning(latents, self.cfg.model.frame_buffer_max, self.dtype, text["text_cond"],
                                     text["text_uncond"])

    def _prepare(self, chunk_index: int, last_frame_HW3: Optional[torch.Tensor]) -> Optional[ChunkInputs]:
        """The lead advances its cache; the replica renders the chunk's cameras together; the lead builds the inputs."""
        conditioner = self.conditioner
        cache = w2cs_1F44 = Ks_1F33 = None
        start = 0  # read on the lead only
        if conditioner is not None:
            with self.timer.stage("conditioning"):
                conditioner.advance(chunk_index, last_frame_HW3)
                cache = conditioner.source.cache
                w2cs_1F44, Ks_1F33 = conditioner.chunk_cameras(chunk_index)
                start = conditioner.source.render_start(chunk_index)
        with self.timer.stage("render"):
            warps, masks = render_distributed(cache, w2cs_1F44, Ks_1F33, group=self.replica.group, src=self.src,
                                              device=self.device if cache is None else cache.device,
                                              counter=self.replica.tokenizer_counter, start_frame_idx=start)
        if conditioner is None:
            return None
        with self.timer.stage("conditioning"):
            return conditioner.tokenizer_inputs(chunk_index, warps, masks, last_frame_HW3)

    def decode(self, latent_BCTHW: torch.Tensor) -> Optional[np.ndarray]:
        with self.timer.stage("decode"), self.models.placement.use_tokenizer(self.models.tokenizer, "decoder") as tok:
            frames = decode_to_uint8_distributed(tok, latent_BCTHW, group=self.replica.group, dst=self.src,
                                                 counter=self.replica.tokenizer_counter)
        return None if frames is None else frames.cpu().numpy()


def chunk_steps(cfg: RunConfig, replica: Replica, *, conditioner: Optional[VideoConditioner],
                models: Optional[ConditioningModels], timer: StageTimer) -> ChunkSteps:
    """The placement the run's settings chose, for one video."""
    kind = GroupChunkSteps if replica.settings.tokenizer_shared else LeadChunkSteps
    return kind(cfg, replica, conditioner=conditioner, models=models, timer=timer)
