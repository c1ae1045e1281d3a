"""Unprojection and forward warping by bilinear splatting with a soft z-buffer (spec sections 7.2-7.5).

Camera conventions and the official operation order of every camera product are in
:mod:`gen3c_dist.geometry.pinhole`. Images are in [-1, 1]. All geometry runs in float32, like the official code,
whose fixtures these functions reproduce.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from gen3c_dist.geometry.pinhole import apply_transform, pixel_grid, pixel_rays, project_to_image
from gen3c_dist.geometry.raycast import occluded_by_foreground

ZBUFFER_SCALE = 50.0
ZBUFFER_MAX_EXPONENT = 80.0  # the official float32 cap on the exponent before exp()
PROJECTION_EPS = 1e-7


@dataclass
class WarpResult:
    """Output of :func:`forward_warp`."""

    image: torch.Tensor  # [B, C, H, W], -1 (images) or 0 where nothing landed
    mask: torch.Tensor  # [B, 1, H, W] float 0/1
    depth: Optional[torch.Tensor]  # [B, H, W] splatted target z-depth (0 = empty); None unless requested
    flow: torch.Tensor  # [B, 2, H, W] projected position - integer grid, for every source pixel


def unproject_points(
    depth_B1HW: torch.Tensor, w2c_B44: torch.Tensor, K_B33: torch.Tensor, *, mask_B1HW: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """World points [B, H, W, 3] of z-depth pixels; (0, 0, 0) where the mask (default: depth > 0) is off.

    Differentiable in ``depth``. The inverse of w2c is taken in fp32. The official code gathers the masked pixels
    before multiplying; each point goes through the same K^-1 and inverse(w2c) products here (spec section 7.2).
    """
    _, _, height, width = depth_B1HW.shape
    mask_BHW1 = (depth_B1HW > 0 if mask_B1HW is None else mask_B1HW.bool())[:, 0, :, :, None]
    cam_BHW3 = depth_B1HW[:, 0, :, :, None] * pixel_rays(K_B33, height, width)
    world_BHW3 = apply_transform(cam_BHW3, torch.linalg.inv(w2c_B44.to(torch.float32)))
    return torch.where(mask_BHW1, world_BHW3, torch.zeros((), dtype=world_BHW3.dtype, device=world_BHW3.device))


def reliable_depth_mask(
    depth_B1HW: torch.Tensor, *, ratio_thresh: float = 0.05, window: int = 5, eps: float = 1e-6
) -> torch.Tensor:
    """Pixels whose local depth range is small: (max - min) / (mean + eps) < thr and depth > 0, bool [B, 1, H, W].

    avg_pool counts the zero padding (count_include_pad=True), so a 2-pixel border tends to be unreliable; kept
    on purpose for parity (spec section 7.2).
    """
    if window % 2 != 1:
        raise ValueError(f"window: must be odd, got {window}")
    pad = window // 2
    local_max = F.max_pool2d(depth_B1HW, kernel_size=window, stride=1, padding=pad)
    local_min = -F.max_pool2d(-depth_B1HW, kernel_size=window, stride=1, padding=pad)
    local_mean = F.avg_pool2d(depth_B1HW, kernel_size=window, stride=1, padding=pad, count_include_pad=True)
    return ((local_max - local_min) / (local_mean + eps) < ratio_thresh) & (depth_B1HW > 0)


def soft_zbuffer_weight(z_B1HW: torch.Tensor, *, group_size: Optional[int] = None) -> torch.Tensor:
    """Divisor exp(clamp(50 log1p(z+) / (max log1p(z+) + 1e-7), max=80)) + 1e-7, [B, 1, H, W].

    The max runs over every pixel of the batch, masked and behind-camera ones included (spec section 7.3); with
    ``group_size`` g it runs over consecutive groups of g items instead, which equals warping each group in its
    own official call (how the cache renders two images at a time).
    """
    log_z = torch.log1p(torch.clamp(z_B1HW, min=0))
    # Non-finite depths (garbage under a mask) are kept out of the max; for finite input this is the official max.
    finite_log_z = torch.where(torch.isfinite(log_z), log_z, torch.zeros((), dtype=log_z.dtype, device=log_z.device))
    if group_size is None:
        log_max = finite_log_z.max()
    else:
        group_B = torch.arange(log_z.shape[0], device=log_z.device) // group_size
        item_max_B = finite_log_z.flatten(1).amax(dim=1)
        group_max = torch.zeros(int(group_B[-1]) + 1, dtype=log_z.dtype, device=log_z.device)
        group_max = group_max.scatter_reduce(0, group_B, item_max_B, reduce="amax", include_self=False)
        log_max = group_max[group_B].view(-1, 1, 1, 1)
    exponent = log_z / (log_max + 1e-7) * ZBUFFER_SCALE
    return torch.exp(torch.clamp(exponent, max=ZBUFFER_MAX_EXPONENT)) + 1e-7


def _splat_corners(pos_B2HW: torch.Tensor, height: int, width: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Flat (H+2)x(W+2)-canvas indices and bilinear proximity weights of the 4 neighbours (nw, sw, ne, se).

    Floor, ceil and the position are clamped separately to [0, W+1] x [0, H+1] after the +1 border offset,
    exactly as the official code does: out-of-view points land in the border that is cropped afterwards.

    Integer landing (official quirk, kept): where a coordinate is an exact integer, floor == ceil, so both of its
    weights are 1 - 0 = 1 and both corners are the same pixel. A point on an exact integer pixel therefore adds 4x
    its weight to that one pixel and nothing to its neighbours, while a point one ulp off gives its neighbours
    ~1e-7. This follows from the formulas themselves (the same floor, ceil, clamps and four accumulated
    contributions as the official ``bilinear_splatting``), not from a special case; it is why the projection
    rounding must be the official one (:mod:`gen3c_dist.geometry.pinhole`).
    """
    offset = pos_B2HW + 1
    lo = [torch.floor(offset[:, 0]).long().clamp(0, width + 1), torch.floor(offset[:, 1]).long().clamp(0, height + 1)]
    hi = [torch.ceil(offset[:, 0]).long().clamp(0, width + 1), torch.ceil(offset[:, 1]).long().clamp(0, height + 1)]
    ox, oy = offset[:, 0].clamp(0, width + 1), offset[:, 1].clamp(0, height + 1)
    wy_lo, wy_hi = 1 - (oy - lo[1]), 1 - (hi[1] - oy)
    wx_lo, wx_hi = 1 - (ox - lo[0]), 1 - (hi[0] - ox)
    xs = [lo[0], lo[0], hi[0], hi[0]]
    ys = [lo[1], hi[1], lo[1], hi[1]]
    prox = [wy_lo * wx_lo, wy_hi * wx_lo, wy_lo * wx_hi, wy_hi * wx_hi]
    return [y * (width + 2) + x for x, y in zip(xs, ys)], prox


def splat_bilinear(
    values_BCHW: torch.Tensor,
    pos_B2HW: torch.Tensor,
    mask_B1HW: torch.Tensor,
    zweight_B1HW: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Accumulate (Sum w*v, Sum w) over target pixels, with w = proximity * mask / zweight.

    Returns ([B, C, H, W], [B, 1, H, W]). Points with mask 0 contribute exactly nothing, even with non-finite
    positions. A NaN weight sum becomes 1000, as in the official code.
    """
    B, C, H, W = values_BCHW.shape
    flat_idx, prox = _splat_corners(pos_B2HW, H, W)
    base_B11 = (torch.arange(B, device=values_BCHW.device) * (H + 2) * (W + 2)).view(B, 1, 1)
    live_BHW = mask_B1HW[:, 0] > 0
    zero = torch.zeros((), dtype=values_BCHW.dtype, device=values_BCHW.device)
    # Masked values are zeroed too: 0 * NaN would otherwise leak garbage from padded points into the canvas.
    vals_BCHW = torch.where(live_BHW[:, None], values_BCHW, zero)
    vals_BHWC1 = torch.cat([vals_BCHW, live_BHW[:, None].to(vals_BCHW.dtype)], dim=1).permute(0, 2, 3, 1)
    srcs, idxs = [], []
    for idx_BHW, prox_BHW in zip(flat_idx, prox):
        w_BHW = torch.where(live_BHW, prox_BHW * mask_B1HW[:, 0] / zweight_B1HW[:, 0], zero)
        srcs.append((vals_BHWC1 * w_BHW[..., None]).reshape(-1, C + 1))
        idxs.append((idx_BHW + base_B11).reshape(-1))
    canvas = torch.zeros(B * (H + 2) * (W + 2), C + 1, dtype=values_BCHW.dtype, device=values_BCHW.device)
    canvas.index_add_(0, torch.cat(idxs), torch.cat(srcs))
    canvas_BCHW = canvas.view(B, H + 2, W + 2, C + 1)[:, 1:-1, 1:-1].permute(0, 3, 1, 2)
    return canvas_BCHW[:, :C], torch.nan_to_num(canvas_BCHW[:, C:], nan=1000.0)


def _target_points(
    frame_BCHW: torch.Tensor,
    *,
    target_w2c_B44: torch.Tensor,
    target_K_B33: torch.Tensor,
    world_points_BHW3: Optional[torch.Tensor],
    depth_B1HW: Optional[torch.Tensor],
    source_w2c_B44: Optional[torch.Tensor],
    source_K_B33: Optional[torch.Tensor],
) -> torch.Tensor:
    """Source points in the target camera frame [B, H, W, 3], from world points or from source depth."""
    B, _, H, W = frame_BCHW.shape
    if world_points_BHW3 is not None:
        if world_points_BHW3.shape != (B, H, W, 3):
            raise ValueError(f"world_points: expected shape {(B, H, W, 3)}, got {tuple(world_points_BHW3.shape)}")
        return apply_transform(world_points_BHW3.to(torch.float32), target_w2c_B44)
    if depth_B1HW is None or source_w2c_B44 is None or source_K_B33 is None:
        raise ValueError("forward_warp: give world_points, or depth with source_w2c and source_K")
    if depth_B1HW.shape != (B, 1, H, W):
        raise ValueError(f"depth: expected shape {(B, 1, H, W)}, got {tuple(depth_B1HW.shape)}")
    depth_B1HW = torch.clamp(torch.nan_to_num(depth_B1HW.to(torch.float32), nan=1e4), min=0, max=1e4)
    src_to_tgt_B44 = torch.bmm(target_w2c_B44, torch.linalg.inv(source_w2c_B44.to(torch.float32)))
    cam_BHW3 = depth_B1HW[:, 0, :, :, None] * pixel_rays(source_K_B33, H, W)
    return apply_transform(cam_BHW3, src_to_tgt_B44)


def forward_warp(
    frame_BCHW: torch.Tensor,
    *,
    target_w2c_B44: torch.Tensor,
    target_K_B33: torch.Tensor,
    world_points_BHW3: Optional[torch.Tensor] = None,
    depth_B1HW: Optional[torch.Tensor] = None,
    source_w2c_B44: Optional[torch.Tensor] = None,
    source_K_B33: Optional[torch.Tensor] = None,
    valid_mask_B1HW: Optional[torch.Tensor] = None,
    render_depth: bool = False,
    boundary_mask_BHW: Optional[torch.Tensor] = None,
    is_image: bool = True,
    zmax_group_size: Optional[int] = None,
) -> WarpResult:
    """Warp source pixels into target cameras by bilinear splatting (official ``forward_warp``, spec 7.3/7.5).

    Source points come either from ``world_points`` (the cache's path) or from ``depth`` + ``source_w2c`` +
    ``source_K`` (points = T2 T1^-1 [d K1^-1 p; 1]). ``valid_mask`` (default all ones) removes points before
    splatting. ``boundary_mask`` switches on foreground masking with that edge mask. Depth is returned when
    ``render_depth`` or foreground masking is on. ``zmax_group_size``: see :func:`soft_zbuffer_weight`.
    """
    B, _, H, W = frame_BCHW.shape
    if target_w2c_B44.shape != (B, 4, 4) or target_K_B33.shape != (B, 3, 3):
        raise ValueError(f"target_w2c/target_K: expected shapes {(B, 4, 4)} and {(B, 3, 3)}")
    if valid_mask_B1HW is not None and valid_mask_B1HW.shape != (B, 1, H, W):
        raise ValueError(f"valid_mask: expected shape {(B, 1, H, W)}, got {tuple(valid_mask_B1HW.shape)}")
    frame_BCHW = frame_BCHW.to(torch.float32)
    target_w2c_B44, target_K_B33 = target_w2c_B44.to(torch.float32), target_K_B33.to(torch.float32)
    cam_BHW3 = _target_points(
        frame_BCHW, target_w2c_B44=target_w2c_B44, target_K_B33=target_K_B33, world_points_BHW3=world_points_BHW3,
        depth_B1HW=depth_B1HW, source_w2c_B44=source_w2c_B44, source_K_B33=source_K_B33,
    )
    proj_BHW3 = project_to_image(cam_BHW3, target_K_B33)
    z_B1HW = proj_BHW3[..., 2][:, None]
    valid_B1HW = torch.ones_like(z_B1HW) if valid_mask_B1HW is None else valid_mask_B1HW.to(z_B1HW.dtype)
    valid_B1HW = valid_B1HW * (z_B1HW > 0)
    coords_B2HW = (proj_BHW3[..., :2] / (proj_BHW3[..., 2:3] + PROJECTION_EPS)).permute(0, 3, 1, 2)
    grid_12HW = pixel_grid(H, W, device=frame_BCHW.device)[None]
    flow_B2HW = coords_B2HW - grid_12HW
    zweight_B1HW = soft_zbuffer_weight(z_B1HW, group_size=zmax_group_size)
    # Depth rides along as an extra channel: the official depth splat uses the very same weights. The position
    # is rebuilt as flow + grid, the official rounding path.
    sums_BCHW, wsum_B1HW = splat_bilinear(
        torch.cat([frame_BCHW, z_B1HW], dim=1), flow_B2HW + grid_12HW, valid_B1HW, zweight_B1HW
    )
    image_BCHW, mask_B1HW, depth_BHW = _resolve_splat(
        sums_BCHW, wsum_B1HW, is_image=is_image, want_depth=render_depth or boundary_mask_BHW is not None
    )
    if boundary_mask_BHW is not None:
        image_BCHW, mask_B1HW, depth_BHW = _mask_foreground_occlusions(
            image_BCHW, mask_B1HW, depth_BHW, cam_BHW3, boundary_mask_BHW, target_K_B33
        )
    return WarpResult(image=image_BCHW, mask=mask_B1HW, depth=depth_BHW, flow=flow_B2HW)


def _resolve_splat(
    sums_BCHW: torch.Tensor, wsum_B1HW: torch.Tensor, *, is_image: bool, want_depth: bool
) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """Normalise the splat sums (last channel = z) into (image [B,C,H,W], mask [B,1,H,W], depth [B,H,W] or None).

    Empty pixels get -1 for images (0 otherwise) and depth 0; images are clamped to [-1, 1].
    """
    hit_B1HW = wsum_B1HW > 0
    fill = torch.tensor(-1.0 if is_image else 0.0, device=sums_BCHW.device)
    image_BCHW = torch.where(hit_B1HW, sums_BCHW[:, :-1] / wsum_B1HW, fill)
    if is_image:
        image_BCHW = image_BCHW.clamp(-1, 1)
    depth_BHW = None
    if want_depth:
        depth_BHW = torch.where(hit_B1HW, sums_BCHW[:, -1:] / wsum_B1HW, torch.zeros((), device=sums_BCHW.device))[:, 0]
    return image_BCHW, hit_B1HW.to(sums_BCHW.dtype), depth_BHW


def _mask_foreground_occlusions(
    image_BCHW: torch.Tensor,
    mask_B1HW: torch.Tensor,
    depth_BHW: torch.Tensor,
    cam_BHW3: torch.Tensor,
    boundary_BHW: torch.Tensor,
    K_B33: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Blank pixels where background shows through holes left by filtered foreground edges (spec 7.5)."""
    if boundary_BHW.shape != depth_BHW.shape:
        raise ValueError(f"boundary_mask: expected shape {tuple(depth_BHW.shape)}, got {tuple(boundary_BHW.shape)}")
    occluded_BHW = torch.stack(
        [occluded_by_foreground(cam_BHW3[b], boundary_BHW[b].bool(), K_B33[b], depth_BHW[b]) for b in range(len(K_B33))]
    )
    keep_BHW = (~occluded_BHW).to(image_BCHW.dtype)
    # (x + 1) * keep - 1 rather than a select: the official arithmetic, kept for bit parity.
    image_BCHW = (image_BCHW + 1) * keep_BHW[:, None] - 1
    return image_BCHW, mask_B1HW * keep_BHW[:, None], depth_BHW * keep_BHW
