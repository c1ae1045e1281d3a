"""The video job's cache source: the user's footage re-shot along a new camera path (``gen3c_dynamic.py``, spec 8.1).

Chunk 0 (:meth:`VideoCacheSource.start`): the lead reads the source video (a directory, a ``.pt`` or a ViPE
folder; :mod:`gen3c_dist.conditioning.video_inputs`), ``num_frames`` frames from ``input.start_frame``, and builds
the :class:`Cache4D` of its per-frame depth, mask and cameras, and the whole camera path:

* a built-in trajectory: its offsets composed per frame onto the source cameras, ``w2c_i = L_i @ w2c_src_i``, K the
  source's per-frame K (:func:`generate_video_trajectory`, fixture kind ``dynamic_trajectory``);
* or ``trajectory.file``: absolute cameras in the source's world; a file without intrinsics takes the source's K.

Chunk k renders output frames [120k, 120k + 121) from the same source frames (``start_frame_idx = 120k``,
:meth:`render_start`), one buffer, so the DiT's second warp/mask pair is zero latents. There is no cache update, as
in the official code: the video's own frames are the memory, and the last generated frame only conditions the next
chunk (the conditioner does that). Chunk 0's condition frame is source frame 0, a float32 tensor in [-1, 1] passed
as the official script passes it (not resized, not quantised).
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from gen3c_dist.conditioning.video_conditioner import FixedCacheSource
from gen3c_dist.conditioning.video_inputs import VideoSourceSpec, check_video_source, load_video_source
from gen3c_dist.config import CacheConfig, InputConfig, TrajectoryConfig
from gen3c_dist.errors import input_errors
from gen3c_dist.geometry.cache4d import Cache4D
from gen3c_dist.geometry.camera import generate_video_trajectory, load_trajectory_file
from gen3c_dist.shapes import CHUNK_STRIDE, chunk_frames


def video_source_spec(inputs: InputConfig) -> VideoSourceSpec:
    """What to read for a video job: the config's input keys as the loader's spec."""
    return VideoSourceSpec(path=str(inputs.video), height=inputs.height, width=inputs.width,
                           num_frames=inputs.num_frames, format=str(inputs.video_format),
                           start_frame=inputs.start_frame, vipe_read_mask=inputs.vipe_read_mask)


def check_video_job(inputs: InputConfig, trajectory: TrajectoryConfig) -> None:
    """Every check of a video job that needs no decoded frame, for every rank before any model loads."""
    with input_errors():
        check_video_source(video_source_spec(inputs))
        if trajectory.file is not None:
            # A file without intrinsics takes the source's K, which check_video_source has checked; this stand-in
            # only lets the file's own arrays be read and checked here, without decoding the source.
            stand_in_K_N33 = torch.eye(3).expand(inputs.num_frames, 3, 3)
            load_trajectory_file(trajectory.file, num_frames=inputs.num_frames, default_intrinsics_N33=stand_in_K_N33)


class VideoCacheSource(FixedCacheSource):
    """Cache and camera path of a video job. ``placement.compute`` is where the cache lives and renders."""

    def __init__(self, inputs: InputConfig, trajectory: TrajectoryConfig, cache_cfg: CacheConfig, *,
                 placement: Any) -> None:
        self.inputs, self.trajectory, self.cache_cfg, self.placement = inputs, trajectory, cache_cfg, placement
        self.cache: Optional[Cache4D] = None
        self.w2cs_N44: Optional[torch.Tensor] = None
        self.Ks_N33: Optional[torch.Tensor] = None
        self.frame0_13HW: Optional[torch.Tensor] = None

    def start(self) -> None:
        """Read the source video, build its 4D cache and the whole camera path."""
        with input_errors():
            video = load_video_source(video_source_spec(self.inputs)).to(self.placement.compute)
        self.cache = Cache4D(video.frames_T3HW, video.depth_T1HW, video.mask_T1HW, video.w2c_T44, video.K_T33,
                             filter_points_threshold=self.cache_cfg.filter_points_threshold,
                             foreground_masking=self.cache_cfg.foreground_masking)
        self.frame0_13HW = video.frames_T3HW[:1].clone()  # the rest of the video lives on in the cache only
        traj = self.trajectory
        if traj.file is not None:
            with input_errors():
                self.w2cs_N44, self.Ks_N33 = load_trajectory_file(traj.file, num_frames=video.num_frames,
                                                                  default_intrinsics_N33=video.K_T33)
        else:
            self.w2cs_N44, self.Ks_N33 = generate_video_trajectory(
                str(traj.type), camera_rotation=str(traj.rotation), movement_distance=traj.distance,
                center_depth=traj.center_depth, source_w2c_N44=video.w2c_T44, source_K_N33=video.K_T33,
            )

    def chunk_cameras(self, chunk_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The chunk's 121 cameras, w2c [1, F, 4, 4] and K [1, F, 3, 3], on the cache's device."""
        assert self.cache is not None and self.w2cs_N44 is not None and self.Ks_N33 is not None
        frames = chunk_frames(chunk_index)
        return self.w2cs_N44[frames][None].to(self.cache.device), self.Ks_N33[frames][None].to(self.cache.device)

    def render_start(self, chunk_index: int) -> int:
        """Output frame i of chunk k warps source frame 120k + i (``Cache4D`` ``start_frame_idx``)."""
        return chunk_index * CHUNK_STRIDE

    def preview_buffers(self, num_chunks: int) -> int:
        return 1  # every chunk renders one buffer (spec 8.1)
