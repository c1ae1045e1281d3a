"""The multi-view key-frame cache: N key frames warped to every target, then two buffers selected per chunk.

Equivalent to the official ``Cache3D_BufferSelector`` of ``gen3c_multiview.py`` (spec section 8.2, fixture kind
``buffer_selector`` in KINDS_video.md). The cache holds N RGB-D key frames with their own masks and cameras and
is never updated. A render is two steps, kept apart so the costly one can be spread over ranks:

1. :meth:`KeyFrameCache.render_all`: every key frame warped to every target camera, through
   :class:`~gen3c_dist.geometry.cache3d.WarpSource` exactly as :class:`~gen3c_dist.geometry.cache3d.Cache3D`
   renders its buffers (items flattened frame-major (B F N), warped two at a time with one z-buffer max per
   pair), so :func:`gen3c_dist.parallel.render_parallel.render_distributed` splits it bit-identically;
2. :func:`select_buffers`: a pure function of the all-N render, run once on the rank that holds it.

Conventions are the cache's: w2c world-to-camera (x right, y down, z forward), K in pixels, integer pixel
centres, z-depth, images in [-1, 1]. Everything is float32 on the device of the key-frame images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gen3c_dist.geometry.cache3d import (
    BOUNDARY_RATIO,
    INIT_DEPTH_MAX,
    WARP_PAIR,
    RenderFinisher,
    WarpSource,
    check_cameras,
)
from gen3c_dist.geometry.warp import reliable_depth_mask, unproject_points

FRAME_BUFFER_MAX = 2  # the official script hard-codes 2 selected buffers (gen3c_multiview.py)
MASK_FULL_THRESHOLD = 0.9  # the official class default: a buffer covering >= 90% of a frame is "near full"


@dataclass
class BufferSelection:
    """The selected renders and how they were chosen (KINDS_video.md, ``buffer_selector`` aux tensors)."""

    images_BFK3HW: torch.Tensor  # kept buffers' warps; -1 where a buffer was dropped on a frame
    masks_BFK1HW: torch.Tensor  # float 0/1; 0 where a buffer was dropped on a frame
    indices_BK: torch.Tensor  # int64: which key frame each selected buffer is, in rank order
    scores_BN: torch.Tensor | None  # float32 mask sum per key frame over the chunk; None when N <= K (no ranking)
    coverage_BFK: torch.Tensor  # float32 mean mask per frame and selected buffer
    keep_BFK: torch.Tensor  # float32 0/1


def _rank_buffers(masks_BFN1HW: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores [B, N], top-k indices [B, k] in descending score order).

    Quirk kept on purpose (KINDS_video.md, ``buffer_selector``): the score sums each key frame's masks over the
    **whole chunk**, all frames and pixels, as one float32 ``sum`` (beyond 2^24 pixels the sum rounds, exactly as
    the official code's), so one pair of buffers serves every frame of the chunk.
    """
    scores_BN = masks_BFN1HW.sum(dim=(1, 3, 4, 5))
    return scores_BN, scores_BN.topk(k=k, dim=1, largest=True, sorted=True).indices


def _keep_first_near_full(coverage_BFK: torch.Tensor, threshold: float) -> torch.Tensor:
    """Float 0/1 [B, F, K]: on a frame where some buffer's coverage is >= ``threshold``, only the first such one.

    Quirk kept on purpose (KINDS_video.md, ``buffer_selector``): the **first** near-full buffer in rank order is
    kept, not the fullest (``argmax`` of the boolean returns the first True). The compare is float32 coverage
    against the threshold rounded to float32. Frames with no near-full buffer keep every buffer.
    """
    near_full_BFK = coverage_BFK >= threshold
    first_BF = near_full_BFK.float().argmax(dim=2)
    only_first_BFK = torch.nn.functional.one_hot(first_BF, coverage_BFK.shape[2]).to(coverage_BFK.dtype)
    has_near_full_BF1 = near_full_BFK.any(dim=2, keepdim=True)
    return torch.where(has_near_full_BF1, only_first_BFK, torch.ones_like(coverage_BFK))


def select_buffers(
    images_BFN3HW: torch.Tensor,
    masks_BFN1HW: torch.Tensor,
    *,
    frame_buffer_max: int = FRAME_BUFFER_MAX,
    mask_full_threshold: float = MASK_FULL_THRESHOLD,
) -> BufferSelection:
    """The official selection over the renders of all N key frames for one chunk (cache_3d.py, lines 377-420).

    * Ranking (skipped when N <= ``frame_buffer_max``, which keeps all N in key-frame order): the top
      ``frame_buffer_max`` key frames by whole-chunk mask sum, in descending order (:func:`_rank_buffers`).
    * Per frame, the coverage rule (:func:`_keep_first_near_full`).
    * A dropped buffer becomes image -1 and mask 0; a kept buffer's pixels go through ``(p + 1) * 1 - 1``. That is
      p only up to float32 rounding (<= 1.2e-7 near 0), kept on purpose for parity (KINDS_video.md,
      ``buffer_selector``).
    """
    if images_BFN3HW.dim() != 6 or images_BFN3HW.shape[3] != 3:
        raise ValueError(f"images: expected shape [B, F, N, 3, H, W], got {list(images_BFN3HW.shape)}")
    B, F, N, _, H, W = images_BFN3HW.shape
    if tuple(masks_BFN1HW.shape) != (B, F, N, 1, H, W):
        raise ValueError(f"masks: expected shape {[B, F, N, 1, H, W]}, got {list(masks_BFN1HW.shape)}")
    if frame_buffer_max < 1:
        raise ValueError(f"frame_buffer_max: must be >= 1, got {frame_buffer_max}")
    device = images_BFN3HW.device
    if N <= frame_buffer_max:
        scores_BN = None
        indices_BK = torch.arange(N, device=device).expand(B, N)
        images_BFK3HW, masks_BFK1HW = images_BFN3HW, masks_BFN1HW
    else:
        scores_BN, indices_BK = _rank_buffers(masks_BFN1HW, frame_buffer_max)
        # Gathered per batch item into contiguous [B, F, K, ...], the official layout, so the coverage means below
        # reduce the same memory in the same order.
        images_BFK3HW = torch.stack([images_BFN3HW[b][:, indices_BK[b]] for b in range(B)])
        masks_BFK1HW = torch.stack([masks_BFN1HW[b][:, indices_BK[b]] for b in range(B)])
    coverage_BFK = masks_BFK1HW.mean(dim=(3, 4, 5))
    keep_BFK = _keep_first_near_full(coverage_BFK, mask_full_threshold)
    keep_BFK111 = keep_BFK[..., None, None, None]
    return BufferSelection(
        images_BFK3HW=(images_BFK3HW + 1) * keep_BFK111 - 1,
        masks_BFK1HW=masks_BFK1HW * keep_BFK111,
        indices_BK=indices_BK,
        scores_BN=scores_BN,
        coverage_BFK=coverage_BFK,
        keep_BFK=keep_BFK,
    )


def _check_key_frames(images: torch.Tensor, depth: torch.Tensor, mask: torch.Tensor, w2c: torch.Tensor,
                      K: torch.Tensor) -> None:
    if images.dim() != 5 or images.shape[2] != 3 or images.shape[1] < 1:
        raise ValueError(f"key-frame images: expected shape [B, N, 3, H, W] with N >= 1, got {list(images.shape)}")
    B, N, _, H, W = images.shape
    expected = (("depth", depth, (B, N, 1, H, W)), ("mask", mask, (B, N, 1, H, W)), ("w2c", w2c, (B, N, 4, 4)),
                ("K", K, (B, N, 3, 3)))
    for name, tensor, shape in expected:
        if tuple(tensor.shape) != shape:
            raise ValueError(f"key-frame {name}: expected shape {list(shape)} to match the images, "
                             f"got {list(tensor.shape)}")
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ValueError("key-frame mask: values must be 0 or 1")


class KeyFrameCache:
    """N key frames as point clouds, rendered to any cameras and reduced to ``frame_buffer_max`` buffers.

    Built as the official ``Cache3D_BufferSelector`` is (spec sections 7.2, 8.2): depth ``nan_to_num(100)`` and
    clamped to [0, 100]; points unprojected per key frame; the point mask is the key frame's mask, times the
    depth-edge filter when ``filter_points_threshold < 1``; with ``foreground_masking``, one edge mask per key
    frame (ratio 0.05). Storage: ``images`` [B, N, 3, H, W], ``points`` [B, N, H, W, 3], ``masks`` [B, N, 1, H, W]
    bool, ``boundary`` [B, N, H, W] bool or None.
    """

    def __init__(
        self,
        images_BN3HW: torch.Tensor,
        depth_BN1HW: torch.Tensor,
        mask_BN1HW: torch.Tensor,
        w2c_BN44: torch.Tensor,
        K_BN33: torch.Tensor,
        *,
        frame_buffer_max: int = FRAME_BUFFER_MAX,
        mask_full_threshold: float = MASK_FULL_THRESHOLD,
        filter_points_threshold: float = 1.0,
        foreground_masking: bool = False,
        images_per_warp: int = 8,
    ) -> None:
        _check_key_frames(images_BN3HW, depth_BN1HW, mask_BN1HW, w2c_BN44, K_BN33)
        if frame_buffer_max < 1:
            raise ValueError(f"frame_buffer_max: must be >= 1, got {frame_buffer_max}")
        if images_per_warp < WARP_PAIR or images_per_warp % WARP_PAIR:
            raise ValueError(f"images_per_warp: must be a positive even number, got {images_per_warp}")
        B, N, _, H, W = images_BN3HW.shape
        self.frame_buffer_max = int(frame_buffer_max)
        self.mask_full_threshold = float(mask_full_threshold)
        self.filter_points_threshold = float(filter_points_threshold)
        self.images_per_warp = images_per_warp
        depth_M1HW = torch.clamp(torch.nan_to_num(depth_BN1HW.float(), nan=INIT_DEPTH_MAX), 0, INIT_DEPTH_MAX)
        depth_M1HW = depth_M1HW.reshape(B * N, 1, H, W)
        self.images = images_BN3HW.float().clone()
        w2c_M44, K_M33 = w2c_BN44.float().reshape(B * N, 4, 4), K_BN33.float().reshape(B * N, 3, 3)
        self.points = unproject_points(depth_M1HW, w2c_M44, K_M33).reshape(B, N, H, W, 3)
        masks_M1HW = mask_BN1HW.reshape(B * N, 1, H, W).bool()
        if self.filter_points_threshold < 1.0:
            masks_M1HW = masks_M1HW & reliable_depth_mask(depth_M1HW, ratio_thresh=self.filter_points_threshold)
        self.masks = masks_M1HW.reshape(B, N, 1, H, W)
        self.boundary = None
        if foreground_masking:
            self.boundary = ~reliable_depth_mask(depth_M1HW, ratio_thresh=BOUNDARY_RATIO).reshape(B, N, H, W)

    @property
    def num_key_frames(self) -> int:
        return self.images.shape[1]

    @property
    def device(self) -> torch.device:
        return self.images.device

    @property
    def output_buffers(self) -> int:
        """Buffers in :meth:`render`'s output: ``min(frame_buffer_max, N)``."""
        return min(self.frame_buffer_max, self.num_key_frames)

    def warp_source(self) -> WarpSource:
        """The tensors the all-N render reads (views, not copies), e.g. to warp a range of items on another rank.

        One shared slot (every target frame warps all N key frames), each key frame with its own edge mask."""
        return WarpSource(self.images[:, None], self.points[:, None], self.masks[:, None],
                          None if self.boundary is None else self.boundary[:, None], self.images_per_warp)

    def chunk_source(self, num_frames: int, start_frame_idx: int = 0) -> WarpSource:
        """:meth:`warp_source`: the key frames serve every target frame, so there is no frame to start from."""
        if start_frame_idx != 0:
            raise ValueError(f"start_frame_idx: key frames have no source frames to slice, got {start_frame_idx}")
        return self.warp_source()

    def render_all(self, w2cs_BF44: torch.Tensor, Ks_BF33: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every key frame warped to every target: (images [B, F, N, 3, H, W], masks [B, F, N, 1, H, W])."""
        B, N, _, H, W = self.images.shape
        num_frames = check_cameras(w2cs_BF44, Ks_BF33, batch=B)
        source = self.warp_source()
        images, masks, _ = source.warp_range(w2cs_BF44, Ks_BF33, 0, source.num_items(num_frames))
        return images.view(B, num_frames, N, 3, H, W), masks.view(B, num_frames, N, 1, H, W)

    def select(self, images_BFN3HW: torch.Tensor, masks_BFN1HW: torch.Tensor) -> BufferSelection:
        """:func:`select_buffers` with this cache's settings."""
        return select_buffers(images_BFN3HW, masks_BFN1HW, frame_buffer_max=self.frame_buffer_max,
                              mask_full_threshold=self.mask_full_threshold)

    def render_finisher(self, num_frames: int) -> RenderFinisher:
        """What turns an all-N render into :meth:`render`'s output: the selection (nothing to prepare)."""
        def finish(images_BFN3HW: torch.Tensor, masks_BFN1HW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            selection = self.select(images_BFN3HW, masks_BFN1HW)
            return selection.images_BFK3HW, selection.masks_BFK1HW

        return finish

    def render(self, w2cs_BF44: torch.Tensor, Ks_BF33: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The selected warps [B, F, K, 3, H, W] and masks [B, F, K, 1, H, W], K = :attr:`output_buffers`."""
        images_BFN3HW, masks_BFN1HW = self.render_all(w2cs_BF44, Ks_BF33)
        return self.render_finisher(images_BFN3HW.shape[1])(images_BFN3HW, masks_BFN1HW)
