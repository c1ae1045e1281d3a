"""The GEN3C 3D cache: buffered RGB point clouds rendered into target cameras (spec sections 1.6, 1.7, 7.2-7.6).

Equivalent to the official ``Cache3D_Buffer`` for single-image generation. Buffers are kept newest first; the
first frame stays in the last slot once the cache is full. Everything is float32 on the device of the input image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from gen3c_dist.geometry.depth_align import AlignmentConfig, align_depth
from gen3c_dist.geometry.warp import forward_warp, reliable_depth_mask, unproject_points

INIT_DEPTH_MAX = 100.0  # sky / invalid depth on the input frame
UPDATE_DEPTH_MAX = 1e4  # generated frames: not clamped to 100 (official quirk, spec section 10 item 7)
BOUNDARY_RATIO = 0.05  # foreground-masking edge threshold, independent of filter_points_threshold
WARP_PAIR = 2  # the official render warps 2 images per call, each call with its own z-buffer max
# (all-buffer warps [B, F, N, 3, H, W], masks [B, F, N, 1, H, W]) -> a cache's render output
RenderFinisher = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class DepthAlignmentReport:
    """The stages of aligning a new frame's depth to the cache (all [H, W])."""

    render_depth: torch.Tensor  # cache depth rendered at the new camera, buffer 0
    render_mask: torch.Tensor  # bool
    rigid_depth: torch.Tensor
    aligned_depth: torch.Tensor


def _check_frame(
    image_B3HW: torch.Tensor, depth_B1HW: torch.Tensor, w2c_B44: torch.Tensor, K_B33: torch.Tensor
) -> None:
    if image_B3HW.dim() != 4 or image_B3HW.shape[1] != 3:
        raise ValueError(f"image: expected shape [B, 3, H, W], got {list(image_B3HW.shape)}")
    B, _, H, W = image_B3HW.shape
    expected = (("depth", depth_B1HW, (B, 1, H, W)), ("w2c", w2c_B44, (B, 4, 4)), ("K", K_B33, (B, 3, 3)))
    for name, tensor, shape in expected:
        if tuple(tensor.shape) != shape:
            raise ValueError(f"{name}: expected shape {list(shape)} to match the image, got {list(tensor.shape)}")


def check_cameras(w2cs_BF44: torch.Tensor, Ks_BF33: torch.Tensor, *, batch: int) -> int:
    """The number of target frames F of cameras w2cs [B, F, 4, 4] and Ks [B, F, 3, 3]."""
    if w2cs_BF44.dim() != 4 or w2cs_BF44.shape[0] != batch or w2cs_BF44.shape[2:] != (4, 4):
        raise ValueError(f"w2cs: expected shape [{batch}, F, 4, 4], got {list(w2cs_BF44.shape)}")
    num_frames = w2cs_BF44.shape[1]
    if tuple(Ks_BF33.shape) != (batch, num_frames, 3, 3):
        raise ValueError(f"Ks: expected shape [{batch}, {num_frames}, 3, 3], got {list(Ks_BF33.shape)}")
    return num_frames


@dataclass(frozen=True)
class WarpSource:
    """What rendering reads from a cache; enough to warp any range of items without the cache itself.

    Items are the (batch, frame, buffer) triples of a render flattened frame-major: item j is batch j // (F N),
    target frame (j // N) % F, buffer j % N, so a render's output [B, F, N, ...] is the items' results in order.

    The point clouds are indexed [B, S, N] by source slot S:
    * shared (``per_frame=False``, S = 1): every target frame warps the same N buffers (:class:`Cache3D`);
    * per frame (``per_frame=True``): target frame f warps its own slot ``f - first_frame`` (the 4D cache of a
      video, where target frame i comes from source frame s + i). A source may hold only the slots of some
      frames (:meth:`frames`), e.g. the part of a chunk one rank renders.

    The foreground-masking edge mask is [B, S, K, H, W] with K = 1 when one mask serves every buffer of a slot
    (:class:`Cache3D`: the input frame's edges, spec section 1.6) or K = N with one per buffer (key frames).
    """

    images_BSN3HW: torch.Tensor
    points_BSNHW3: torch.Tensor
    masks_BSN1HW: Optional[torch.Tensor]  # bool, None: no depth-edge filter
    boundary_BSKHW: Optional[torch.Tensor]  # bool [B, S, 1 or N, H, W], None: no foreground masking
    images_per_warp: int
    per_frame: bool = False
    first_frame: int = 0  # per-frame sources: the target frame held in slot 0

    @property
    def num_buffers(self) -> int:
        return self.images_BSN3HW.shape[2]

    @property
    def boundary_buffers(self) -> int:
        """0 without foreground masking, else the edge mask's buffer count (1: shared by every buffer)."""
        return 0 if self.boundary_BSKHW is None else self.boundary_BSKHW.shape[2]

    def num_items(self, num_frames: int) -> int:
        return self.images_BSN3HW.shape[0] * num_frames * self.num_buffers

    def frames(self, lo: int, hi: int) -> "WarpSource":
        """The slots of target frames [lo, hi) only (views); a shared source is returned as it is."""
        if not self.per_frame:
            return self
        slots = self.images_BSN3HW.shape[1]
        if not self.first_frame <= lo <= hi <= self.first_frame + slots:
            raise ValueError(f"warp source: frames [{lo}, {hi}) are not all held (it holds frames "
                             f"[{self.first_frame}, {self.first_frame + slots}))")
        a, b = lo - self.first_frame, hi - self.first_frame
        return WarpSource(
            self.images_BSN3HW[:, a:b], self.points_BSNHW3[:, a:b],
            None if self.masks_BSN1HW is None else self.masks_BSN1HW[:, a:b],
            None if self.boundary_BSKHW is None else self.boundary_BSKHW[:, a:b],
            self.images_per_warp, per_frame=True, first_frame=lo,
        )

    def _slots(self, f: torch.Tensor, num_frames: int) -> torch.Tensor:
        """Source slot of each target frame in ``f``; raises if a per-frame source lacks one."""
        if not self.per_frame:
            if self.images_BSN3HW.shape[1] != 1:
                raise ValueError(f"warp source: a shared source has 1 slot, got {self.images_BSN3HW.shape[1]}")
            return torch.zeros_like(f)
        slots = self.images_BSN3HW.shape[1]
        lo, hi = int(f.min()), int(f.max()) + 1
        if not (self.first_frame <= lo and hi <= self.first_frame + slots and hi <= num_frames):
            raise ValueError(f"warp source: target frames [{lo}, {hi}) of {num_frames} are not all held "
                             f"(it holds frames [{self.first_frame}, {self.first_frame + slots}))")
        return f - self.first_frame

    def warp_range(
        self, w2cs_BF44: torch.Tensor, Ks_BF33: torch.Tensor, start: int, stop: int, *, want_depth: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """Images [J, 3, H, W], masks [J, 1, H, W] and depth [J, H, W] (or None) of items [start, stop).

        ``start`` must be a multiple of WARP_PAIR: each pair has its own z-buffer max (spec section 7.3), so a
        split pair would change the result. Items are warped ``images_per_warp`` at a time from ``start``; the
        warp is per item apart from the pair max, so the batching does not change the values (checked by tests).
        """
        B, _, N, _, H, W = self.images_BSN3HW.shape
        num_frames = check_cameras(w2cs_BF44, Ks_BF33, batch=B)
        total = self.num_items(num_frames)
        if start % WARP_PAIR or not 0 <= start <= stop <= total:
            raise ValueError(
                f"warp range: [{start}, {stop}) must lie in [0, {total}] and start at a multiple of {WARP_PAIR}"
            )
        device = self.images_BSN3HW.device
        w2cs_BF44, Ks_BF33 = w2cs_BF44.to(device, torch.float32), Ks_BF33.to(device, torch.float32)
        images = [torch.empty(0, 3, H, W, device=device, dtype=torch.float32)]  # so an empty range has a shape
        masks = [torch.empty(0, 1, H, W, device=device, dtype=torch.float32)]
        depths = [torch.empty(0, H, W, device=device, dtype=torch.float32)]
        for first in range(start, stop, self.images_per_warp):
            j = torch.arange(first, min(first + self.images_per_warp, stop), device=device)
            alone = len(j) == 1
            if alone:
                # torch folds a batch of one into a plain 2D matmul, whose rounding differs from the batched
                # one; warping the item twice (a pair with itself: the same z-buffer max) keeps every item's
                # bits independent of how a range is cut into batches, which the split render relies on.
                j = j.repeat(2)
            b, f, n = j // (num_frames * N), (j // N) % num_frames, j % N
            s = self._slots(f, num_frames)
            k = n if self.boundary_buffers > 1 else torch.zeros_like(n)
            result = forward_warp(
                self.images_BSN3HW[b, s, n],
                target_w2c_B44=w2cs_BF44[b, f],
                target_K_B33=Ks_BF33[b, f],
                world_points_BHW3=self.points_BSNHW3[b, s, n],
                valid_mask_B1HW=None if self.masks_BSN1HW is None else self.masks_BSN1HW[b, s, n],
                render_depth=want_depth,
                boundary_mask_BHW=None if self.boundary_BSKHW is None else self.boundary_BSKHW[b, s, k],
                zmax_group_size=WARP_PAIR,
            )
            keep = slice(0, 1) if alone else slice(None)
            images.append(result.image[keep])
            masks.append(result.mask[keep])
            if want_depth:
                depths.append(result.depth[keep])
        return torch.cat(images), torch.cat(masks), torch.cat(depths) if want_depth else None


def item_frames(item_range: tuple[int, int], *, batch: int, num_frames: int, buffers: int) -> tuple[int, int]:
    """The target frames [lo, hi) that items [start, stop) of a B x F x N render touch ((0, 0) when empty).

    A range that crosses a batch boundary touches every frame.
    """
    start, stop = item_range
    if stop <= start:
        return 0, 0
    per_batch = num_frames * buffers
    if start // per_batch != (stop - 1) // per_batch:
        return 0, num_frames
    return (start // buffers) % num_frames, ((stop - 1) // buffers) % num_frames + 1


class Cache3D:
    """Point-cloud buffers of RGB-D frames, rendered by forward warping.

    Storage: ``images`` [B, N, 3, H, W], ``points`` [B, N, H, W, 3] (world), ``masks`` [B, N, 1, H, W] bool or
    None (no depth-edge filter), ``boundary`` [B, H, W] bool or None (no foreground masking). N grows to
    ``frame_buffer_max``, newest first.
    """

    def __init__(
        self,
        image_B3HW: torch.Tensor,
        depth_B1HW: torch.Tensor,
        w2c_B44: torch.Tensor,
        K_B33: torch.Tensor,
        *,
        generator: torch.Generator,
        frame_buffer_max: int = 2,
        filter_points_threshold: float = 1.0,
        foreground_masking: bool = False,
        noise_aug_strength: float = 0.0,
        images_per_warp: int = 8,
    ) -> None:
        _check_frame(image_B3HW, depth_B1HW, w2c_B44, K_B33)
        if frame_buffer_max < 1:
            raise ValueError(f"frame_buffer_max: must be >= 1, got {frame_buffer_max}")
        if not math.isfinite(noise_aug_strength) or noise_aug_strength < 0:
            raise ValueError(f"noise_aug_strength: must be finite and >= 0, got {noise_aug_strength}")
        if images_per_warp < WARP_PAIR or images_per_warp % WARP_PAIR:
            raise ValueError(f"images_per_warp: must be a positive even number, got {images_per_warp}")
        self.generator = generator
        self.frame_buffer_max = frame_buffer_max
        self.filter_points_threshold = float(filter_points_threshold)
        self.noise_aug_strength = float(noise_aug_strength)
        self.images_per_warp = images_per_warp
        depth_B1HW = torch.clamp(torch.nan_to_num(depth_B1HW.float(), nan=INIT_DEPTH_MAX), 0, INIT_DEPTH_MAX)
        self.images = image_B3HW.float()[:, None].clone()
        self.points = unproject_points(depth_B1HW, w2c_B44.float(), K_B33.float())[:, None]
        self.masks = self._point_mask(depth_B1HW)
        if self.masks is not None:
            self.masks = self.masks[:, None]
        # Computed once from the input depth and reused for every later buffer (official quirk, spec section 1.6).
        self.boundary = None
        if foreground_masking:
            self.boundary = ~reliable_depth_mask(depth_B1HW, ratio_thresh=BOUNDARY_RATIO)[:, 0]

    @property
    def filter_enabled(self) -> bool:
        return self.filter_points_threshold < 1.0

    @property
    def num_buffers(self) -> int:
        return self.images.shape[1]

    @property
    def device(self) -> torch.device:
        return self.images.device

    def _point_mask(self, depth_B1HW: torch.Tensor) -> Optional[torch.Tensor]:
        """[B, 1, H, W] bool: points off depth edges (spec section 7.4), or None when the filter is off."""
        if not self.filter_enabled:
            return None
        return reliable_depth_mask(depth_B1HW, ratio_thresh=self.filter_points_threshold)

    def warp_source(self) -> WarpSource:
        """The tensors rendering reads (views, not copies), e.g. to warp a range of items on another rank."""
        return WarpSource(
            self.images[:, None], self.points[:, None], None if self.masks is None else self.masks[:, None],
            None if self.boundary is None else self.boundary[:, None, None], self.images_per_warp,
        )

    def chunk_source(self, num_frames: int, start_frame_idx: int = 0) -> WarpSource:
        """:meth:`warp_source`; the buffers serve every target frame, so there is no frame to start from."""
        if start_frame_idx != 0:
            raise ValueError(f"start_frame_idx: a 3D cache has no source frames to slice, got {start_frame_idx}")
        return self.warp_source()

    @property
    def output_buffers(self) -> int:
        """Buffers in :meth:`render`'s output: all of them."""
        return self.num_buffers

    def render_finisher(self, num_frames: int) -> RenderFinisher:
        """What turns the raw warps of a ``num_frames`` render into :meth:`render`'s output: adding the noise.

        The noise is drawn here, at once, so a distributed render can draw it while other ranks' warps arrive;
        the generator advances exactly as in :meth:`render`, and the sum is the serial render's own expression.
        """
        B, N, _, H, W = self.images.shape
        noise_BFN3HW = self.warp_noise((B, num_frames, N, 3, H, W))
        return lambda images_BFN3HW, masks_BFN1HW: (images_BFN3HW + noise_BFN3HW, masks_BFN1HW)

    def _warp_all(
        self, w2cs_BF44: torch.Tensor, Ks_BF33: torch.Tensor, *, want_depth: bool
    ) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """Warp every (batch, frame, buffer) triple, flattened frame-major, in official pairs of 2.

        Each pair has its own z-buffer max (spec section 7.3). Several pairs share one vectorised call.
        """
        B, N, _, H, W = self.images.shape
        num_frames = check_cameras(w2cs_BF44, Ks_BF33, batch=B)
        source = self.warp_source()
        images, masks, depth = source.warp_range(
            w2cs_BF44, Ks_BF33, 0, source.num_items(num_frames), want_depth=want_depth
        )
        images_BFN3HW = images.view(B, num_frames, N, 3, H, W)
        masks_BFN1HW = masks.view(B, num_frames, N, 1, H, W)
        depth_BFNHW = depth.view(B, num_frames, N, H, W) if want_depth else None
        return images_BFN3HW, masks_BFN1HW, depth_BFNHW

    def warp_noise(self, shape_BFN3HW: tuple[int, ...]) -> torch.Tensor:
        """``randn(generator) * strength * (N - 1 - n)`` for buffer n (newest gets the most), of a render's shape.

        Drawn for the whole shape even at strength 0, so the generator advances the same way (spec section 1.7).
        The generator must live on the cache's device.
        """
        if len(shape_BFN3HW) != 6 or shape_BFN3HW[2] != self.num_buffers:
            raise ValueError(f"warps: expected shape [B, F, {self.num_buffers}, 3, H, W], got {list(shape_BFN3HW)}")
        noise = torch.randn(shape_BFN3HW, generator=self.generator, device=self.device, dtype=torch.float32)
        per_buffer_N = torch.arange(self.num_buffers - 1, -1, -1, device=self.device, dtype=torch.float32)
        per_buffer_N = per_buffer_N * self.noise_aug_strength
        return noise * per_buffer_N.view(1, 1, -1, 1, 1, 1)

    def add_warp_noise(self, images_BFN3HW: torch.Tensor) -> torch.Tensor:
        """``images + warp_noise(images.shape)``."""
        return images_BFN3HW + self.warp_noise(tuple(images_BFN3HW.shape))

    def render(self, w2cs_BF44: torch.Tensor, Ks_BF33: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Warps [B, F, N, 3, H, W] (-1 where empty, plus :meth:`add_warp_noise`) and masks [B, F, N, 1, H, W]
        (float 0/1)."""
        images_BFN3HW, masks_BFN1HW, _ = self._warp_all(w2cs_BF44, Ks_BF33, want_depth=False)
        return self.add_warp_noise(images_BFN3HW), masks_BFN1HW

    def render_depth(self, w2cs_BF44: torch.Tensor, Ks_BF33: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Splatted target z-depth [B, F, N, H, W] (0 where empty) and masks [B, F, N, 1, H, W]; no noise."""
        _, masks_BFN1HW, depth_BFNHW = self._warp_all(w2cs_BF44, Ks_BF33, want_depth=True)
        return depth_BFNHW, masks_BFN1HW

    def align_new_depth(
        self,
        depth_11HW: torch.Tensor,
        w2c_144: torch.Tensor,
        K_133: torch.Tensor,
        *,
        non_rigid: bool = True,
        cfg: AlignmentConfig = AlignmentConfig(),
    ) -> DepthAlignmentReport:
        """Align a new frame's depth to the cache rendered at its camera (buffer 0); the cache is not changed."""
        if self.images.shape[0] != 1 or tuple(depth_11HW.shape) != (1, 1, *self.images.shape[-2:]):
            raise ValueError(f"depth: alignment needs batch 1 and shape [1, 1, H, W], got {list(depth_11HW.shape)}")
        depth_11HW = torch.clamp(torch.nan_to_num(depth_11HW.float(), nan=UPDATE_DEPTH_MAX), 0, UPDATE_DEPTH_MAX)
        render_BFNHW, mask_BFN1HW = self.render_depth(w2c_144[:, None], K_133[:, None])
        render_HW, mask_HW = render_BFNHW[0, 0, 0], mask_BFN1HW[0, 0, 0, 0].bool()
        aligned = align_depth(
            depth_11HW[0, 0], render_HW, mask_HW, K_33=K_133[0].float(), w2c_44=w2c_144[0].float(),
            non_rigid=non_rigid, cfg=cfg,
        )
        return DepthAlignmentReport(render_HW, mask_HW, aligned.rigid, aligned.final)

    def update(
        self,
        image_B3HW: torch.Tensor,
        depth_B1HW: torch.Tensor,
        w2c_B44: torch.Tensor,
        K_B33: torch.Tensor,
        *,
        depth_alignment: bool = True,
        non_rigid: bool = True,
        cfg: AlignmentConfig = AlignmentConfig(),
    ) -> torch.Tensor:
        """Insert a generated frame as buffer 0 and return the depth used for it, [B, 1, H, W].

        Depth is sanitised with nan_to_num(1e4) and clamp(0, 1e4), then (by default) aligned to the cache. When
        the cache is full, slot 0 is overwritten, so the input frame stays in the last slot (spec section 1.6).
        """
        _check_frame(image_B3HW, depth_B1HW, w2c_B44, K_B33)
        if image_B3HW.shape[0] != self.images.shape[0] or image_B3HW.shape[-2:] != self.images.shape[-2:]:
            raise ValueError(
                f"image: shape {list(image_B3HW.shape)} does not match the cache {list(self.images.shape)}"
            )
        depth_B1HW = torch.clamp(torch.nan_to_num(depth_B1HW.float(), nan=UPDATE_DEPTH_MAX), 0, UPDATE_DEPTH_MAX)
        if depth_alignment:
            report = self.align_new_depth(depth_B1HW, w2c_B44, K_B33, non_rigid=non_rigid, cfg=cfg)
            depth_B1HW = report.aligned_depth[None, None].to(self.device)
        points_BHW3 = unproject_points(depth_B1HW, w2c_B44.float(), K_B33.float())
        self._insert(image_B3HW.float(), points_BHW3, self._point_mask(depth_B1HW))
        return depth_B1HW

    def _insert(self, image_B3HW: torch.Tensor, points_BHW3: torch.Tensor, mask_B1HW: Optional[torch.Tensor]) -> None:
        """Put a frame in slot 0: prepend while there is room, else overwrite the newest slot.

        New tensors are built (no in-place writes), so views handed out earlier keep their values. With
        frame_buffer_max == 1 the official code keeps the old frame's edge mask; we store the new frame's, which
        is the one that matches the new points.
        """
        keep = slice(0, None) if self.num_buffers < self.frame_buffer_max else slice(1, None)
        self.images = torch.cat([image_B3HW[:, None], self.images[:, keep]], dim=1)
        self.points = torch.cat([points_BHW3[:, None], self.points[:, keep]], dim=1)
        if self.masks is not None:
            self.masks = torch.cat([mask_B1HW[:, None], self.masks[:, keep]], dim=1)
