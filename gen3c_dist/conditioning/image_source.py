"""The image job's cache source: one picture, its depth, a 3D cache fed by every generated chunk (spec 1.4-1.6).

Chunk 0: depth for the input image (a depth file, or MoGe), the :class:`Cache3D` built from it, and the whole
camera path (a built-in trajectory at full length, as the official script makes it, or a trajectory file).
Chunk k >= 1: the last decoded frame of chunk k - 1, quantised to uint8 as the official run does, is inserted
as buffer 0, with its depth from MoGe aligned to the cache (or, for random-weight runs, the cache's own depth
rendered at that camera).

The video and multi-view jobs implement the same :class:`gen3c_dist.conditioning.video_conditioner.CacheSource`
with their own caches; the conditioner and the runner do not know which one they hold.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Optional

import torch

from gen3c_dist.conditioning.depth import DepthEstimate, estimate_frame_depth, estimate_input_image_depth
from gen3c_dist.conditioning.depth_file import depth_from_file
from gen3c_dist.conditioning.encode import normalise_and_resize
from gen3c_dist.conditioning.image_io import read_condition_image
from gen3c_dist.conditioning.input_image import read_image_size
from gen3c_dist.config import CacheConfig, GeneratedFrameDepth, InputConfig, TrajectoryConfig
from gen3c_dist.errors import InputError
from gen3c_dist.geometry.cache3d import Cache3D
from gen3c_dist.geometry.camera import generate_trajectory, load_trajectory_file
from gen3c_dist.shapes import CHUNK_STRIDE, chunk_frames

logger = logging.getLogger(__name__)


ASPECT_DISTORTION_WARN = 2.0  # the image is squashed anisotropically to H x W (spec 7.1); past 2x it shows
DEPTH_QUANTILE = 0.95


def warn_about_framing(inputs: InputConfig, trajectory: TrajectoryConfig, estimate: DepthEstimate) -> None:
    """Warn (once per video, on the lead) about a strongly distorted aspect ratio and a camera path that leaves
    the scene. Both may be intended, so neither is refused."""
    height, width = read_image_size(inputs.image)
    distortion = (width / height) / (inputs.width / inputs.height)
    if max(distortion, 1 / distortion) > ASPECT_DISTORTION_WARN:
        logger.warning("input.image %s is %dx%d (aspect %.3g) and is resized to %dx%d (aspect %.3g): it will look "
                       "stretched by %.3gx; crop it to the output's aspect ratio first to avoid that", inputs.image,
                       width, height, width / height, inputs.width, inputs.height, inputs.width / inputs.height,
                       max(distortion, 1 / distortion))
    if trajectory.file is not None:
        return
    depth = estimate.depth[estimate.depth > 0]
    if depth.numel() == 0:
        return
    # The largest camera offset of the built-in paths is distance x center_depth (spec 7.7).
    travel = trajectory.distance * trajectory.center_depth
    far = float(torch.quantile(depth.float().flatten()[:1_000_000], DEPTH_QUANTILE))
    if travel > far:
        logger.warning("trajectory.distance=%g moves the camera %.3g scene units, beyond the scene's depth range "
                       "(%d%% of its depth lies within %.3g): the camera leaves the scene and most frames will be "
                       "empty", trajectory.distance, travel, int(DEPTH_QUANTILE * 100), far)


class ImageCacheSource:
    """Cache and camera path of an image job. ``placement`` lends MoGe to the compute device for each call."""

    def __init__(self, inputs: InputConfig, trajectory: TrajectoryConfig, cache_cfg: CacheConfig, *,
                 frame_buffer_max: int, moge: Optional[Any], placement: Any) -> None:
        self.inputs, self.trajectory, self.cache_cfg = inputs, trajectory, cache_cfg
        self.frame_buffer_max, self.moge, self.placement = frame_buffer_max, moge, placement
        self.cache: Optional[Cache3D] = None
        self.w2cs_N44: Optional[torch.Tensor] = None
        self.Ks_N33: Optional[torch.Tensor] = None

    def _input_depth(self) -> DepthEstimate:
        inp = self.inputs
        if inp.depth is not None:
            return depth_from_file(inp.image, inp.depth, inp.height, inp.width, png_scale=inp.depth_png_scale,
                                   intrinsics=inp.intrinsics)
        if self.moge is None:
            raise InputError("no depth model is loaded and input.depth is not set: give checkpoints.moge or input.depth")
        with self.placement.use("moge", self.moge) as moge:
            return estimate_input_image_depth(moge, inp.image, inp.height, inp.width)

    def start(self) -> None:
        """Depth, cache and the whole camera path (generated at full length, as the official script does)."""
        estimate = self._input_depth()
        # The cache lives where the models compute (a depth file loads on the CPU): its renders feed the tokenizer
        # there, and with parallel.tokenizer=group its state crosses the replica's collectives from that device.
        estimate = dataclasses.replace(estimate, **{f.name: getattr(estimate, f.name).to(self.placement.compute)
                                                    for f in dataclasses.fields(estimate)})
        self.cache = Cache3D(
            estimate.image, estimate.depth, estimate.w2c, estimate.intrinsics,
            generator=torch.Generator(device=estimate.image.device).manual_seed(self.inputs.seed),
            frame_buffer_max=self.frame_buffer_max,
            filter_points_threshold=self.cache_cfg.filter_points_threshold,
            foreground_masking=self.cache_cfg.foreground_masking,
            noise_aug_strength=self.cache_cfg.noise_aug_strength,
        )
        warn_about_framing(self.inputs, self.trajectory, estimate)
        traj, n = self.trajectory, self.inputs.num_frames
        if traj.file is not None:
            self.w2cs_N44, self.Ks_N33 = load_trajectory_file(traj.file, num_frames=n)
        else:
            self.w2cs_N44, self.Ks_N33 = generate_trajectory(
                traj.type, camera_rotation=traj.rotation, num_frames=n, movement_distance=traj.distance,
                center_depth=traj.center_depth, initial_w2c_44=estimate.w2c[0], initial_K_33=estimate.intrinsics[0],
            )

    def advance(self, chunk_index: int, last_frame_HW3: torch.Tensor) -> None:
        """Insert the last decoded frame (uint8) of the previous chunk into the cache (spec 1.6 steps 1-3)."""
        assert self.cache is not None and self.w2cs_N44 is not None and self.Ks_N33 is not None
        img01_3HW = last_frame_HW3.permute(2, 0, 1).float() / 255
        frame_index = chunk_index * CHUNK_STRIDE
        device = self.cache.device
        w2c_144 = self.w2cs_N44[frame_index][None].to(device)
        K_133 = self.Ks_N33[frame_index][None].to(device)
        if self.cache_cfg.generated_frame_depth == GeneratedFrameDepth.cache_render:
            depth_BFNHW, _ = self.cache.render_depth(w2c_144[:, None], K_133[:, None])
            depth_11HW, align = depth_BFNHW[:, 0, :1], False  # newest buffer, already in the cache's frame
        else:
            with self.placement.use("moge", self.moge) as moge:
                depth_11HW, _ = estimate_frame_depth(moge, img01_3HW)
            align = True
        self.cache.update((img01_3HW * 2 - 1)[None].to(device), depth_11HW.to(device), w2c_144, K_133,
                          depth_alignment=align)

    def chunk_cameras(self, chunk_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The chunk's 121 cameras, w2c [1, F, 4, 4] and K [1, F, 3, 3], on the cache's device."""
        assert self.cache is not None and self.w2cs_N44 is not None and self.Ks_N33 is not None
        frames = chunk_frames(chunk_index)
        return self.w2cs_N44[frames][None].to(self.cache.device), self.Ks_N33[frames][None].to(self.cache.device)

    def render_start(self, chunk_index: int) -> int:
        return 0  # the buffers serve every target frame

    def preview_buffers(self, num_chunks: int) -> int:
        """Chunk 0 renders the input image alone, later chunks fill the cache (the official padding width)."""
        return min(num_chunks, self.frame_buffer_max)

    def first_frame(self, dtype: torch.dtype) -> torch.Tensor:
        """Chunk 0's condition frame [1, 3, 1, H, W]: the image through the official imageio path (spec 5.3)."""
        inp = self.inputs
        return normalise_and_resize(read_condition_image(inp.image), inp.height, inp.width, dtype)

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
