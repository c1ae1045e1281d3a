"""The multi-view job's cache source: N posed key frames warped to every chunk (``gen3c_multiview.py``, spec 8.2).

Chunk 0 (:meth:`MultiviewCacheSource.start`): the lead reads the key frames and the target path
(:func:`gen3c_dist.conditioning.multiview_inputs.load_multiview`: the official npz with its ``w2cs_all``, the npz
or a key-frame folder with ``trajectory.file`` as the path) and builds the :class:`KeyFrameCache`. Every chunk
renders all N key frames to its 121 cameras, split over the replica, and keeps the official two buffers
(``Cache3D_BufferSelector``, :mod:`gen3c_dist.geometry.buffer_selector`); N <= 2 keeps all N without ranking.

There is no cache update, as in the official code; chunk 0 is conditioned on key frame 0 (a float32 tensor in
[-1, 1], passed as the official script passes it), later chunks on the last generated frame (the conditioner).
Key frames are not resized (official), so they must be the run's ``input.height`` x ``input.width``. The
built-in ``trajectory.type`` is not used: the path is ``w2cs_all`` or the trajectory file.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from gen3c_dist.conditioning.multiview_inputs import MultiviewInputs, TargetPath, load_multiview
from gen3c_dist.conditioning.video_conditioner import FixedCacheSource
from gen3c_dist.config import CacheConfig, InputConfig, TrajectoryConfig
from gen3c_dist.errors import InputError, input_errors
from gen3c_dist.geometry.buffer_selector import KeyFrameCache


def load_multiview_job(inputs: InputConfig, trajectory: TrajectoryConfig) -> MultiviewInputs:
    """Key frames and target path of a multi-view job, checked (on the CPU); cheap enough for every rank."""
    with input_errors():
        loaded = load_multiview(inputs.key_frames, num_frames=inputs.num_frames, trajectory_file=trajectory.file)
    size_hw = loaded.key_frames.size_hw
    if size_hw != (inputs.height, inputs.width):
        raise InputError(f"input.key_frames {inputs.key_frames}: key frames are {size_hw[0]}x{size_hw[1]} but the "
                         f"run is {inputs.height}x{inputs.width} (input.height x input.width); key frames are not "
                         "resized, as in the official code")
    return loaded


def check_multiview_job(inputs: InputConfig, trajectory: TrajectoryConfig) -> None:
    """Every check of a multi-view job, for every rank before any model loads."""
    load_multiview_job(inputs, trajectory)


class MultiviewCacheSource(FixedCacheSource):
    """Cache and camera path of a multi-view job. ``placement.compute`` is where the cache lives and renders."""

    def __init__(self, inputs: InputConfig, trajectory: TrajectoryConfig, cache_cfg: CacheConfig, *,
                 frame_buffer_max: int, placement: Any) -> None:
        self.inputs, self.trajectory, self.cache_cfg, self.placement = inputs, trajectory, cache_cfg, placement
        self.frame_buffer_max = frame_buffer_max
        self.cache: Optional[KeyFrameCache] = None
        self.path: Optional[TargetPath] = None
        self.frame0_13HW: Optional[torch.Tensor] = None

    def start(self) -> None:
        """Read the key frames and the target path; build the key-frame cache."""
        loaded = load_multiview_job(self.inputs, self.trajectory)
        key_frames = loaded.key_frames.to(self.placement.compute)
        self.cache = key_frames.cache(filter_points_threshold=self.cache_cfg.filter_points_threshold,
                                      foreground_masking=self.cache_cfg.foreground_masking,
                                      frame_buffer_max=self.frame_buffer_max)
        self.path = loaded.path
        self.frame0_13HW = key_frames.first_frame_13HW()

    def chunk_cameras(self, chunk_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The chunk's 121 target cameras, w2c [1, F, 4, 4] and K [1, F, 3, 3], on the cache's device."""
        assert self.cache is not None and self.path is not None
        return self.path.chunk(chunk_index, self.cache.device)

    def render_start(self, chunk_index: int) -> int:
        return 0  # every target frame warps all key frames: there is no source frame to start from

    def preview_buffers(self, num_chunks: int) -> int:
        assert self.cache is not None
        return self.cache.output_buffers  # min(frame_buffer_max, N) in every chunk
