"""GEN3C conditioning for one video, run on the lead rank of its replica (spec sections 1.4, 1.6, 5.3, 6, 7).

Per chunk the conditioner asks its :class:`CacheSource` (one per GEN3C job: image, video, multi-view) to
advance and for the chunk's cameras, renders the cache (here, or split over the replica by the runner), and
turns the renders, the condition frame and the text into the tokenizer's inputs. The encoded result is a
:class:`ChunkConditioning`, whose shapes every rank knows from the config alone (:func:`conditioning_shapes`),
so the other ranks receive it in one broadcast without a shape handshake.

Chunk 0's condition frame comes from the source (the input image, a source video's frame 0, key frame 0);
chunk k >= 1 is conditioned on the last decoded frame of chunk k - 1, quantised to uint8 as the official run
does (spec 1.6).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ContextManager, Optional, Protocol

import torch

from gen3c_dist.conditioning.encode import assemble_pose, condition_video, frame_from_uint8, warp_videos
from gen3c_dist.conditioning.text import DEFAULT_NEGATIVE_PROMPT, encode_prompts
from gen3c_dist.config import LATENT_CHANNELS, InputConfig, ModelConfig, TextConfig
from gen3c_dist.model.tokenizer.video_tokenizer import VideoTokenizer
from gen3c_dist.shapes import CHUNK_FRAMES, latent_thw


@dataclasses.dataclass(frozen=True)
class ChunkConditioning:
    """What the DiT needs for one chunk; the one object that crosses the lead-rank broadcast."""

    gt_latent: torch.Tensor  # [1, 16, Lt, h, w] condition latent (only frame 0 is used)
    pose: torch.Tensor  # [1, 32 * frame_buffer_max, Lt, h, w] warp/mask latents, zeros for missing buffers
    text_cond: torch.Tensor  # [1, 512, Ct] prompt embedding
    text_uncond: torch.Tensor  # [1, 512, Ct] negative-prompt embedding

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def conditioning_shapes(model: ModelConfig, *, height: int, width: int, text_length: int) -> dict[str, tuple[int, ...]]:
    """Shapes of every :class:`ChunkConditioning` field, computable on any rank from the config."""
    lt, h, w = latent_thw(height, width, pixel_frames=CHUNK_FRAMES)
    return {
        "gt_latent": (1, LATENT_CHANNELS, lt, h, w),
        "pose": (1, 2 * LATENT_CHANNELS * model.frame_buffer_max, lt, h, w),
        "text_cond": (1, text_length, model.crossattn_emb_channels),
        "text_uncond": (1, text_length, model.crossattn_emb_channels),
    }


@dataclasses.dataclass
class ChunkInputs:
    """A chunk's tokenizer inputs on the lead: the condition video, then per buffer the warp and mask videos."""

    videos: list[torch.Tensor]  # [1, 3, 121, H, W] each, 1 + 2 * n_buf of them
    text_cond: torch.Tensor  # [1, 512, Ct]
    text_uncond: torch.Tensor


def assemble_conditioning(latents: list[torch.Tensor], frame_buffer_max: int, dtype: torch.dtype,
                          text_cond: torch.Tensor, text_uncond: torch.Tensor) -> ChunkConditioning:
    """The encodes' latents (in :attr:`ChunkInputs.videos` order) assembled as the official path does (spec 5.3)."""
    gt_latent = latents[0]
    pose = assemble_pose(latents[1:], frame_buffer_max, tuple(gt_latent.shape), dtype=gt_latent.dtype, device=gt_latent.device)
    return ChunkConditioning(gt_latent=gt_latent.to(dtype), pose=pose.to(dtype), text_cond=text_cond, text_uncond=text_uncond)


class ModelPlacement(Protocol):
    """Where a conditioning model runs: ``use`` lends it to ``compute`` for one call (runner.models.DeviceSwap)."""

    compute: torch.device

    def use(self, name: str, module: Any) -> ContextManager[Any]: ...

    def use_tokenizer(self, tokenizer: VideoTokenizer, part: str) -> ContextManager[VideoTokenizer]: ...


class CacheSource(Protocol):
    """One GEN3C job's cache and camera path, asked once per chunk by the conditioner."""

    cache: Any  # what the render reads: ``render(w2cs, Ks)`` here, or split over the replica by the runner

    def start(self) -> None:
        """Chunk 0: build the cache and the whole camera path."""

    def advance(self, chunk_index: int, last_frame_HW3: torch.Tensor) -> None:
        """Chunk k >= 1: take in the last decoded frame of chunk k - 1 (or ignore it, for caches never updated)."""

    def chunk_cameras(self, chunk_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """w2c [1, 121, 4, 4] and K [1, 121, 3, 3] of the chunk, on the cache's device."""

    def render_start(self, chunk_index: int) -> int:
        """The source frame the chunk's render starts from: ``120k`` for a video's 4D cache (target frame i warps
        source frame 120k + i), 0 for caches whose buffers serve every target frame (image, key frames)."""

    def preview_buffers(self, num_chunks: int) -> int:
        """Buffers of the widest chunk render of a ``num_chunks`` video: the width of the cache preview."""

    def first_frame(self, dtype: torch.dtype) -> torch.Tensor:
        """Chunk 0's condition frame [1, 3, 1, H, W] in [-1, 1], in the dtype the official code feeds the encoder:
        ``dtype`` (the tokenizer's) for an image read from a file; float32 for a tensor (a video's frame 0, key
        frame 0), as for the decoded frame of a later chunk."""

    def state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...


class FixedCacheSource:
    """What the video and multi-view sources share: a cache built once from the inputs and never updated.

    Chunk 0 is conditioned on the input's own frame 0 (``frame0_13HW``, set by ``start()``), passed as the float32
    tensor the official scripts pass; later chunks on the last generated frame, which changes nothing in the
    cache. So a rerun resumes by rebuilding everything from the inputs: the state is empty.
    """

    frame0_13HW: Optional[torch.Tensor] = None  # set by the subclass's start(), which loads its input

    def advance(self, chunk_index: int, last_frame_HW3: torch.Tensor) -> None:
        """Nothing: the cache is never updated (official); the last frame only conditions the next chunk."""

    def first_frame(self, dtype: torch.dtype) -> torch.Tensor:
        """Frame 0 as [1, 3, 1, H, W] float32 in [-1, 1]; ``dtype`` (the tokenizer's) is not applied, as for a
        decoded frame of a later chunk."""
        assert self.frame0_13HW is not None
        return self.frame0_13HW[:, :, None]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.start()


TextOpener = Callable[[], ContextManager[Any]]  # lends the session's T5 (runner.models.SessionTextEncoder.open)


@dataclasses.dataclass
class ConditioningModels:
    """Models that only the lead rank loads, and where they live between uses."""

    tokenizer: VideoTokenizer  # needs the encoder (and the decoder, for the lead's decode)
    moge: Optional[Any]  # MoGe v1; None only when no chunk needs it (depth file and a single chunk)
    placement: ModelPlacement
    open_text_encoder: Optional[TextOpener] = None  # the session's T5; None: a T5 per call (or text disabled)


class VideoConditioner:
    """Cache source and text for one video; produces the conditioning of each chunk on the lead rank."""

    def __init__(self, source: CacheSource, inputs: InputConfig, *, models: ConditioningModels,
                 model_cfg: ModelConfig, text_cfg: TextConfig, t5_dir: Optional[str], dtype: torch.dtype) -> None:
        self.source, self.inputs, self.models = source, inputs, models
        self.model_cfg, self.text_cfg, self.t5_dir, self.dtype = model_cfg, text_cfg, t5_dir, dtype
        self.text: Optional[tuple[torch.Tensor, torch.Tensor]] = None
        self.last_warps: Optional[tuple[torch.Tensor, torch.Tensor]] = None  # for the optional cache preview

    def text_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.text is None:
            inp = self.inputs
            negative = DEFAULT_NEGATIVE_PROMPT if inp.negative_prompt is None else inp.negative_prompt
            embeddings = encode_prompts(
                inp.prompt, negative, t5_dir=self.t5_dir, disable_prompt_encoder=not self.text_cfg.enabled,
                cache_dir=self.text_cfg.cache_dir, max_length=self.text_cfg.max_length,
                embed_dim=self.model_cfg.crossattn_emb_channels, open_encoder=self.models.open_text_encoder,
            )
            self.text = (embeddings.prompt.to(self.dtype), embeddings.negative.to(self.dtype))
        return self.text

    def advance(self, chunk_index: int, last_frame_HW3: Optional[torch.Tensor]) -> None:
        """Chunk 0: the source's cache and camera path; later chunks: the last decoded frame goes to the source."""
        if chunk_index == 0:
            self.source.start()
        else:
            assert last_frame_HW3 is not None, "chunks after the first need the previous chunk's last decoded frame"
            self.source.advance(chunk_index, last_frame_HW3)

    def chunk_cameras(self, chunk_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.source.chunk_cameras(chunk_index)

    def tokenizer_inputs(self, chunk_index: int, warps: torch.Tensor, masks: torch.Tensor,
                         last_frame_HW3: Optional[torch.Tensor]) -> ChunkInputs:
        """The videos to encode (condition frame, then warp and mask per buffer) and the text embeddings."""
        self.last_warps = (warps, masks)
        text_cond, text_uncond = self.text_embeddings()
        dtype = self.models.tokenizer.dtype
        if chunk_index == 0:
            frame_B31HW = self.source.first_frame(dtype)
        else:
            frame_B31HW = frame_from_uint8(last_frame_HW3)  # float32, as the official run feeds it
        videos = [condition_video(frame_B31HW, CHUNK_FRAMES)] + warp_videos(warps, masks, dtype)
        return ChunkInputs(videos=videos, text_cond=text_cond, text_uncond=text_uncond)

    def render(self, chunk_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The chunk's cache render on this rank alone: warps [1, F, n_buf, 3, H, W], masks [1, F, n_buf, 1, H, W]."""
        w2cs_1F44, Ks_1F33 = self.chunk_cameras(chunk_index)
        start = self.source.render_start(chunk_index)
        if start == 0:
            return self.source.cache.render(w2cs_1F44, Ks_1F33)
        return self.source.cache.render(w2cs_1F44, Ks_1F33, start_frame_idx=start)  # a 4D cache's later chunks

    def prepare(self, chunk_index: int, last_frame_HW3: Optional[torch.Tensor]) -> ChunkInputs:
        """Cache update and render, text: everything of a chunk up to the tokenizer, on this rank alone."""
        self.advance(chunk_index, last_frame_HW3)
        warps, masks = self.render(chunk_index)
        return self.tokenizer_inputs(chunk_index, warps, masks, last_frame_HW3)

    def encode(self, inputs: ChunkInputs) -> ChunkConditioning:
        """Every encode of the chunk on this rank (``parallel.tokenizer=lead``, the official placement)."""
        with self.models.placement.use_tokenizer(self.models.tokenizer, "encoder") as tokenizer:
            latents = [tokenizer.encode(video).contiguous() for video in inputs.videos]  # 1 + 2 * n_buf encodes
        return assemble_conditioning(latents, self.model_cfg.frame_buffer_max, self.dtype,
                                     inputs.text_cond, inputs.text_uncond)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.source.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.source.load_state_dict(state)
