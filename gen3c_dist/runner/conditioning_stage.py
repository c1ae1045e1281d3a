"""GEN3C conditioning for one video, run on the lead rank of its group only (spec sections 1.4, 1.6, 5.3, 6, 7).

The lead rank owns the depth model, the 3D cache, the tokenizer encoder and the text encoder. Per chunk it
produces a :class:`ChunkConditioning` whose shapes every rank knows from the config alone
(:func:`conditioning_shapes`), so the other ranks receive it in one broadcast without a shape handshake.

Chunk 0 uses the input image (its depth from MoGe or a depth file); chunk k >= 1 uses the last decoded frame,
quantised to uint8 as the official run does, whose MoGe depth is aligned to the cache and inserted as buffer 0.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import torch

from gen3c_dist.conditioning.depth import DepthEstimate, estimate_frame_depth, estimate_input_image_depth
from gen3c_dist.conditioning.depth_file import depth_from_file
from gen3c_dist.conditioning.encode import (
    assemble_pose,
    condition_video,
    frame_from_uint8,
    normalise_and_resize,
    warp_videos,
)
from gen3c_dist.conditioning.image_io import read_condition_image
from gen3c_dist.conditioning.text import DEFAULT_NEGATIVE_PROMPT, encode_prompts
from gen3c_dist.config import LATENT_CHANNELS, CacheConfig, CheckpointConfig, ModelConfig, TextConfig
from gen3c_dist.errors import InputError
from gen3c_dist.geometry.cache3d import Cache3D
from gen3c_dist.geometry.camera import generate_trajectory, load_trajectory_file
from gen3c_dist.model.tokenizer.video_tokenizer import VideoTokenizer
from gen3c_dist.perf.flops import latent_thw
from gen3c_dist.runner.jobs import CHUNK_FRAMES, VideoJob
from gen3c_dist.runner.offload import DeviceSwap
from gen3c_dist.runner.text_encoder import SessionTextEncoder
from gen3c_dist.runner.timing import StageTimer



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


@dataclasses.dataclass
class ConditioningModels:
    """Models that only the lead rank loads, and where they live between uses."""

    tokenizer: VideoTokenizer  # needs the encoder (and the decoder, for the lead's decode)
    moge: Optional[Any]  # MoGe v1; None only when no chunk needs it (depth file and a single chunk)
    swap: DeviceSwap = dataclasses.field(default_factory=lambda: DeviceSwap(torch.device("cpu"), offload=False))
    text: Optional[SessionTextEncoder] = None  # the session's T5; None: a T5 per call (or text disabled)


class VideoConditioner:
    """Cache, camera path and text for one video; produces the conditioning of each chunk on the lead rank."""

    def __init__(
        self,
        job: VideoJob,
        *,
        models: ConditioningModels,
        model_cfg: ModelConfig,
        cache_cfg: CacheConfig,
        text_cfg: TextConfig,
        checkpoints: CheckpointConfig,
        dtype: torch.dtype,
        timer: Optional[StageTimer] = None,
    ) -> None:
        self.job, self.models, self.model_cfg, self.dtype = job, models, model_cfg, dtype
        self.cache_cfg, self.text_cfg, self.checkpoints = cache_cfg, text_cfg, checkpoints
        self.cache: Optional[Cache3D] = None
        self.w2cs_N44: Optional[torch.Tensor] = None
        self.Ks_N33: Optional[torch.Tensor] = None
        self.text: Optional[tuple[torch.Tensor, torch.Tensor]] = None
        self.last_warps: Optional[tuple[torch.Tensor, torch.Tensor]] = None  # for the optional cache preview
        self.timer = timer or StageTimer()

    # ---- chunk 0 ---------------------------------------------------------------------------------------------
    def input_depth(self) -> DepthEstimate:
        inp = self.job.input
        if inp.depth is not None:
            return depth_from_file(inp.image, inp.depth, inp.height, inp.width, png_scale=inp.depth_png_scale)
        if self.models.moge is None:
            raise InputError("no depth model is loaded and input.depth is not set: give checkpoints.moge or input.depth")
        with self.models.swap.use("moge", self.models.moge) as moge:
            return estimate_input_image_depth(moge, inp.image, inp.height, inp.width)

    def start(self) -> None:
        """Depth, cache and the whole camera path (generated at full length, as the official script does)."""
        estimate = self.input_depth()
        # The cache lives where the models compute (a depth file loads on the CPU): its renders feed the tokenizer
        # there, and with parallel.tokenizer=group its state crosses the replica's collectives from that device.
        estimate = dataclasses.replace(estimate, **{f.name: getattr(estimate, f.name).to(self.models.swap.compute)
                                                    for f in dataclasses.fields(estimate)})
        self.cache = Cache3D(
            estimate.image,
            estimate.depth,
            estimate.w2c,
            estimate.intrinsics,
            generator=torch.Generator(device=estimate.image.device).manual_seed(self.job.input.seed),
            frame_buffer_max=self.model_cfg.frame_buffer_max,
            filter_points_threshold=self.cache_cfg.filter_points_threshold,
            foreground_masking=self.cache_cfg.foreground_masking,
            noise_aug_strength=self.cache_cfg.noise_aug_strength,
        )
        traj, n = self.job.trajectory, self.job.input.num_frames
        if traj.file is not None:
            self.w2cs_N44, self.Ks_N33 = load_trajectory_file(traj.file, num_frames=n)
        else:
            self.w2cs_N44, self.Ks_N33 = generate_trajectory(
                traj.type,
                camera_rotation=traj.rotation,
                num_frames=n,
                movement_distance=traj.distance,
                center_depth=traj.center_depth,
                initial_w2c_44=estimate.w2c[0],
                initial_K_33=estimate.intrinsics[0],
            )

    def text_embeddings(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.text is None:
            inp = self.job.input
            negative = DEFAULT_NEGATIVE_PROMPT if inp.negative_prompt is None else inp.negative_prompt
            embeddings = encode_prompts(
                inp.prompt,
                negative,
                t5_dir=self.checkpoints.t5_dir,
                disable_prompt_encoder=not self.text_cfg.enabled,
                cache_dir=self.text_cfg.cache_dir,
                max_length=self.text_cfg.max_length,
                embed_dim=self.model_cfg.crossattn_emb_channels,
                open_encoder=None if self.models.text is None else self.models.text.open,
            )
            self.text = (embeddings.prompt.to(self.dtype), embeddings.negative.to(self.dtype))
        return self.text

    # ---- every chunk -------------------------------------------------------------------------------------------
    def update_with_frame(self, chunk_index: int, frame_HW3: torch.Tensor) -> None:
        """Insert the last decoded frame (uint8) of the previous chunk into the cache (spec 1.6 steps 1-3)."""
        assert self.cache is not None and self.w2cs_N44 is not None and self.Ks_N33 is not None
        img01_3HW = frame_HW3.permute(2, 0, 1).float() / 255
        frame_index = chunk_index * (CHUNK_FRAMES - 1)
        device = self.cache.device
        w2c_144 = self.w2cs_N44[frame_index][None].to(device)
        K_133 = self.Ks_N33[frame_index][None].to(device)
        if self.cache_cfg.generated_frame_depth == "cache_render":
            depth_BFNHW, _ = self.cache.render_depth(w2c_144[:, None], K_133[:, None])
            depth_11HW, align = depth_BFNHW[:, 0, :1], False  # newest buffer, already in the cache's frame
        else:
            with self.models.swap.use("moge", self.models.moge) as moge:
                depth_11HW, _ = estimate_frame_depth(moge, img01_3HW)
            align = True
        self.cache.update((img01_3HW * 2 - 1)[None].to(device), depth_11HW.to(device), w2c_144, K_133, depth_alignment=align)

    def advance(self, chunk_index: int, last_frame_HW3: Optional[torch.Tensor]) -> None:
        """Chunk 0: depth, cache and camera path; later chunks: insert the last decoded frame into the cache."""
        if chunk_index == 0:
            self.start()
        else:
            if last_frame_HW3 is None:
                raise ValueError("chunks after the first need the last decoded frame of the previous chunk")
            self.update_with_frame(chunk_index, last_frame_HW3)

    def chunk_cameras(self, chunk_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The chunk's 121 cameras, w2c [1, F, 4, 4] and K [1, F, 3, 3], on the cache's device."""
        assert self.cache is not None and self.w2cs_N44 is not None and self.Ks_N33 is not None
        first = chunk_index * (CHUNK_FRAMES - 1)
        frames = slice(first, first + CHUNK_FRAMES)
        return self.w2cs_N44[frames][None].to(self.cache.device), self.Ks_N33[frames][None].to(self.cache.device)

    def tokenizer_inputs(self, chunk_index: int, warps: torch.Tensor, masks: torch.Tensor,
                         last_frame_HW3: Optional[torch.Tensor]) -> ChunkInputs:
        """The videos to encode (condition frame, then warp and mask per buffer) and the text embeddings."""
        self.last_warps = (warps, masks)
        text_cond, text_uncond = self.text_embeddings()
        dtype = self.models.tokenizer.dtype
        if chunk_index == 0:
            inp = self.job.input
            frame_B31HW = normalise_and_resize(read_condition_image(inp.image), inp.height, inp.width, dtype)
        else:
            frame_B31HW = frame_from_uint8(last_frame_HW3)  # float32, as the official run feeds it
        videos = [condition_video(frame_B31HW, CHUNK_FRAMES)] + warp_videos(warps, masks, dtype)
        return ChunkInputs(videos=videos, text_cond=text_cond, text_uncond=text_uncond)

    def prepare(self, chunk_index: int, last_frame_HW3: Optional[torch.Tensor]) -> ChunkInputs:
        """Depth, cache update and render, text: everything of a chunk up to the tokenizer (lead only)."""
        with self.timer.stage("conditioning"):
            self.advance(chunk_index, last_frame_HW3)
            assert self.cache is not None
            warps, masks = self.cache.render(*self.chunk_cameras(chunk_index))
            return self.tokenizer_inputs(chunk_index, warps, masks, last_frame_HW3)

    def chunk(self, chunk_index: int, last_frame_HW3: Optional[torch.Tensor]) -> ChunkConditioning:
        """The conditioning of chunk ``chunk_index`` with every encode on this rank (``parallel.tokenizer=lead``)."""
        inputs = self.prepare(chunk_index, last_frame_HW3)
        with self.timer.stage("encode"), self.models.swap.use_tokenizer(self.models.tokenizer, "encoder") as tokenizer:
            latents = [tokenizer.encode(video).contiguous() for video in inputs.videos]  # 1 + 2 * n_buf encodes
        return assemble_conditioning(latents, self.model_cfg.frame_buffer_max, self.dtype,
                                     inputs.text_cond, inputs.text_uncond)

    # ---- resumption --------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Everything a rerun needs to continue after a complete chunk (the input-image state is rebuilt)."""
        assert self.cache is not None
        state = {"cache.images": self.cache.images, "cache.points": self.cache.points}
        if self.cache.masks is not None:
            state["cache.masks"] = self.cache.masks
        state["cache.generator"] = self.cache.generator.get_state()
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Rebuild chunk-0 state (trajectory, boundary mask) then restore the buffers and the warp-noise RNG."""
        self.start()
        assert self.cache is not None
        self.cache.images = state["cache.images"].to(self.cache.device)
        self.cache.points = state["cache.points"].to(self.cache.device)
        if "cache.masks" in state:
            self.cache.masks = state["cache.masks"].to(self.cache.device)
        self.cache.generator.set_state(state["cache.generator"])
