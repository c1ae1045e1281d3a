"""The 4D cache of a source video: one RGB point cloud per source frame, rendered into target cameras.

Equivalent to the official ``Cache4D`` of ``gen3c_dynamic.py`` (spec section 8.1; fixture kind
``cache4d_render``): a chunk of F target frames starting at output frame s warps source frames [s, s + F), target
frame i from source frame s + i only. There is one buffer and no update: the video's own frames are the memory.

Built as the official class builds it:
* depth is sanitised with ``nan_to_num(100)`` and ``clamp(0, 100)`` (spec section 7.2), and unprojected per frame
  with that frame's w2c and K;
* the points kept are the loader's mask, times the depth-edge filter ``reliable(depth, thr)`` when
  ``filter_points_threshold < 1`` (``cache_3d.py:123-129``);
* with foreground masking, each frame's boundary is ``~reliable(depth, 0.05)``.

Rendering goes through :class:`gen3c_dist.geometry.cache3d.WarpSource` (per-frame slots), so target frames are
warped in the official pairs (0, 1), (2, 3), ..., each pair sharing one log-depth max although its two frames come
from different source frames, and a replica can split a chunk over ranks bit-identically
(:func:`gen3c_dist.parallel.render_parallel.render_distributed`).

Differences from the official code, none of which changes a number the official code produces:
* Foreground masking works for every chunk. The official code expands the boundary masks to the F target frames
  without the ``start_frame_idx`` slice (``cache_3d.py:170-172``), which raises unless the video has exactly F
  frames and s = 0 (so ``--foreground_masking`` fails for any run longer than one chunk). We slice the boundary
  masks with the frames, which is the same thing where the official code runs.
* Cameras of any float dtype are accepted and cast to float32 (the official unprojection fails on float64 K).
* Mask values must be 0 or 1. The official code multiplies its splat weights by the mask, so a fractional mask
  would silently re-weight points; we refuse it instead.

The cache lives on the device of the input frames, float32, like :class:`Cache3D`; a CPU cache renders on the CPU.
"""

from __future__ import annotations

from typing import Optional

import torch

from gen3c_dist.geometry.cache3d import BOUNDARY_RATIO, INIT_DEPTH_MAX, RenderFinisher, WarpSource, check_cameras
from gen3c_dist.geometry.warp import reliable_depth_mask, unproject_points

IMAGES_PER_WARP = 8  # several official pairs per vectorised warp call; the values do not depend on it


def _check_video(frames_T3HW: torch.Tensor, depth_T1HW: torch.Tensor, mask_T1HW: torch.Tensor,
                 w2c_T44: torch.Tensor, K_T33: torch.Tensor) -> None:
    if frames_T3HW.dim() != 4 or frames_T3HW.shape[1] != 3 or frames_T3HW.shape[0] < 1:
        raise ValueError(f"frames: expected shape [T, 3, H, W] with T >= 1, got {list(frames_T3HW.shape)}")
    T, _, H, W = frames_T3HW.shape
    expected = (("depth", depth_T1HW, (T, 1, H, W)), ("mask", mask_T1HW, (T, 1, H, W)),
                ("w2c", w2c_T44, (T, 4, 4)), ("K", K_T33, (T, 3, 3)))
    for name, tensor, shape in expected:
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{name}: expected shape {list(shape)} to match the frames, got {list(tensor.shape)}")
    if mask_T1HW.dtype != torch.bool and not bool(((mask_T1HW == 0) | (mask_T1HW == 1)).all()):
        raise ValueError("mask: values must be 0 or 1 (or bool); the mask selects points, it does not weight them")


class Cache4D:
    """Per-frame point clouds of a video, rendered by forward warping.

    Storage (T source frames): ``images`` [T, 3, H, W], ``points`` [T, H, W, 3] (world), ``masks``
    [T, 1, H, W] bool (the loader's mask, times the depth-edge filter when it is on), ``boundary`` [T, H, W] bool
    or None (no foreground masking).
    """

    def __init__(
        self,
        frames_T3HW: torch.Tensor,
        depth_T1HW: torch.Tensor,
        mask_T1HW: torch.Tensor,
        w2c_T44: torch.Tensor,
        K_T33: torch.Tensor,
        *,
        filter_points_threshold: float = 1.0,
        foreground_masking: bool = False,
        images_per_warp: int = IMAGES_PER_WARP,
    ) -> None:
        _check_video(frames_T3HW, depth_T1HW, mask_T1HW, w2c_T44, K_T33)
        if images_per_warp < 2 or images_per_warp % 2:
            raise ValueError(f"images_per_warp: must be a positive even number, got {images_per_warp}")
        self.filter_points_threshold = float(filter_points_threshold)
        self.images_per_warp = images_per_warp
        device = frames_T3HW.device
        depth_T1HW = torch.clamp(torch.nan_to_num(depth_T1HW.to(device, torch.float32), nan=INIT_DEPTH_MAX),
                                 0, INIT_DEPTH_MAX)
        self.images = frames_T3HW.to(torch.float32).clone()
        self.points = unproject_points(depth_T1HW, w2c_T44.to(device, torch.float32), K_T33.to(device, torch.float32))
        self.masks = mask_T1HW.to(device).bool()
        if self.filter_points_threshold < 1.0:
            self.masks = self.masks & reliable_depth_mask(depth_T1HW, ratio_thresh=self.filter_points_threshold)
        self.boundary: Optional[torch.Tensor] = None
        if foreground_masking:
            self.boundary = ~reliable_depth_mask(depth_T1HW, ratio_thresh=BOUNDARY_RATIO)[:, 0]

    @property
    def num_frames(self) -> int:
        return self.images.shape[0]

    @property
    def device(self) -> torch.device:
        return self.images.device

    def chunk_source(self, num_frames: int, start_frame_idx: int = 0) -> WarpSource:
        """The per-frame warp source of target frames [0, num_frames) from source frames [s, s + num_frames)."""
        s, F = start_frame_idx, num_frames
        if isinstance(s, bool) or not isinstance(s, int) or s < 0:
            raise ValueError(f"start_frame_idx: must be an integer >= 0, got {s!r}")
        if F < 1 or s + F > self.num_frames:
            raise ValueError(f"4D cache: a chunk of {F} frames from source frame {s} needs source frames "
                             f"[{s}, {s + F}), but the video has {self.num_frames}")
        frames = slice(s, s + F)
        return WarpSource(
            self.images[None, frames, None], self.points[None, frames, None], self.masks[None, frames, None],
            None if self.boundary is None else self.boundary[None, frames, None], self.images_per_warp,
            per_frame=True,
        )

    @property
    def output_buffers(self) -> int:
        return 1  # one buffer: the second warp/mask pair of the DiT input is zero latents (spec 8.1)

    def render_finisher(self, num_frames: int) -> RenderFinisher:
        """The warps as they are: the official Cache4D adds no noise."""
        return lambda images_BFN3HW, masks_BFN1HW: (images_BFN3HW, masks_BFN1HW)

    def _render(self, w2cs_BF44: torch.Tensor, Ks_BF33: torch.Tensor, start_frame_idx: int, *, want_depth: bool
                ) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        num_frames = check_cameras(w2cs_BF44, Ks_BF33, batch=1)
        source = self.chunk_source(num_frames, start_frame_idx)
        images, masks, depth = source.warp_range(w2cs_BF44, Ks_BF33, 0, source.num_items(num_frames),
                                                 want_depth=want_depth)
        H, W = self.images.shape[-2:]
        depth_1F1HW = depth.view(1, num_frames, 1, H, W) if want_depth else None
        return images.view(1, num_frames, 1, 3, H, W), masks.view(1, num_frames, 1, 1, H, W), depth_1F1HW

    def render(self, w2cs_1F44: torch.Tensor, Ks_1F33: torch.Tensor, start_frame_idx: int = 0
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Warps [1, F, 1, 3, H, W] (-1 where empty) and masks [1, F, 1, 1, H, W] (float 0/1) of a chunk.

        Target frame i (cameras ``w2cs[0, i]``, ``Ks[0, i]``) is warped from source frame
        ``start_frame_idx + i``; those source frames must exist.
        """
        images, masks, _ = self._render(w2cs_1F44, Ks_1F33, start_frame_idx, want_depth=False)
        return images, masks

    def render_depth(self, w2cs_1F44: torch.Tensor, Ks_1F33: torch.Tensor, start_frame_idx: int = 0
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """Splatted target z-depth [1, F, 1, H, W] (0 where empty) and masks [1, F, 1, 1, H, W]."""
        _, masks, depth = self._render(w2cs_1F44, Ks_1F33, start_frame_idx, want_depth=True)
        return depth, masks
