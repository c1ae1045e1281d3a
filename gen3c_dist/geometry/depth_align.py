"""Align a monocular depth map to the depth the 3D cache renders at the same camera (spec section 7.6).

Two stages, as the official ``camera_utils.align_depth(..., "non_rigid")``: an affine fit in inverse depth on the
10-90% quantile band, then a per-pixel scale map refined by Adam with a smoothness term.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from gen3c_dist.geometry.pinhole import apply_transform, pixel_rays


@dataclass(frozen=True)
class AlignmentConfig:
    """Non-rigid alignment settings; the defaults are the official ones."""

    num_iters: int = 100
    adam_lr: float = 1e-3
    lambda_smooth: float = 0.1  # official name: lambda_arap
    smoothing_kernel_size: int = 3
    quantile_low: float = 0.1
    quantile_high: float = 0.9

    def __post_init__(self) -> None:
        if self.num_iters < 0:
            raise ValueError(f"num_iters: must be >= 0, got {self.num_iters}")
        if self.smoothing_kernel_size < 1 or self.smoothing_kernel_size % 2 != 1:
            raise ValueError(f"smoothing_kernel_size: must be odd and >= 1, got {self.smoothing_kernel_size}")
        if not 0.0 <= self.quantile_low < self.quantile_high <= 1.0:
            raise ValueError(
                f"quantile_low/high: need 0 <= low < high <= 1, got {self.quantile_low}, {self.quantile_high}"
            )


@dataclass
class AlignedDepth:
    """Both stages' results, [H, W] each."""

    rigid: torch.Tensor
    final: torch.Tensor


def _inner_band(values_HW: torch.Tensor, select_HW: torch.Tensor, cfg: AlignmentConfig, name: str) -> torch.Tensor:
    """Pixels strictly between the low/high quantiles of ``values[select]``; the test runs on every pixel."""
    picked = values_HW[select_HW]
    if picked.numel() == 0:
        raise ValueError(f"depth alignment: {name} has no valid pixels to fit")
    bounds = torch.tensor([cfg.quantile_low, cfg.quantile_high], dtype=values_HW.dtype, device=values_HW.device)
    low, high = torch.quantile(picked, bounds)
    return (values_HW > low) & (values_HW < high)


def rigid_align_depth(
    source_depth_HW: torch.Tensor, target_depth_HW: torch.Tensor, target_mask_HW: torch.Tensor, *, cfg: AlignmentConfig
) -> torch.Tensor:
    """1 / (scale / source + bias), with (scale, bias) the least-squares fit of 1/target on 1/source.

    Only pixels inside both quantile bands enter the fit; the target band is computed over the rendered mask
    where the rendered depth is > 0, the source band over 1/source > 0.
    """
    inv_src_HW = 1.0 / source_depth_HW
    inv_tgt_HW = 1.0 / target_depth_HW
    fit_HW = _inner_band(inv_src_HW, inv_src_HW > 0, cfg, "the new depth") & _inner_band(
        inv_tgt_HW, target_mask_HW.bool() & (target_depth_HW > 0), cfg, "the cache render"
    )
    if int(fit_HW.sum()) < 2:
        raise ValueError("depth alignment: fewer than 2 pixels overlap between the new depth and the cache render")
    src_N1 = inv_src_HW[fit_HW].view(-1, 1)
    design_N2 = torch.cat([src_N1, torch.ones_like(src_N1)], dim=1)
    solution_21 = torch.linalg.lstsq(design_N2, inv_tgt_HW[fit_HW].view(-1, 1)).solution
    return 1.0 / (inv_src_HW * solution_21[0, 0] + solution_21[1, 0])


def _refine_scale_map(
    depth_HW: torch.Tensor,
    target_depth_HW: torch.Tensor,
    mask_HW: torch.Tensor,
    K_33: torch.Tensor,
    c2w_44: torch.Tensor,
    cfg: AlignmentConfig,
) -> torch.Tensor:
    """Adam over a scale map s: L1 between masked 3D points of d*s and of the target, + lambda * |box(s) - s|.

    Only masked pixels enter the data term, so only they are unprojected; rays and the transform are built once.
    """
    k = cfg.smoothing_kernel_size
    box_11KK = torch.full((1, 1, k, k), 1.0 / (k * k), dtype=depth_HW.dtype, device=depth_HW.device)
    height, width = depth_HW.shape
    rays_M3 = pixel_rays(K_33[None], height, width)[0][mask_HW]
    # c2w goes where unproject expects w2c, so points are mapped by inverse(c2w) = w2c: an official slip, kept
    # for parity and harmless since both sides get the same rigid motion (spec section 7.6).
    to_world_144 = torch.linalg.inv(c2w_44)[None]
    target_M3 = apply_transform((target_depth_HW[mask_HW][:, None] * rays_M3)[None, None], to_world_144)[0, 0]
    scale_HW = torch.ones_like(depth_HW).requires_grad_(True)
    optimizer = torch.optim.Adam([scale_HW], lr=cfg.adam_lr)
    for _ in range(cfg.num_iters):
        cam_M3 = (depth_HW * scale_HW)[mask_HW][:, None] * rays_M3
        data_loss = (apply_transform(cam_M3[None, None], to_world_144)[0, 0] - target_M3).abs().mean()
        smooth_HW = F.conv2d(scale_HW[None, None], box_11KK, padding=k // 2)[0, 0]
        loss = data_loss + cfg.lambda_smooth * (smooth_HW - scale_HW).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return (depth_HW * scale_HW).detach()


def align_depth(
    source_depth_HW: torch.Tensor,
    target_depth_HW: torch.Tensor,
    target_mask_HW: torch.Tensor,
    *,
    K_33: torch.Tensor,
    w2c_44: torch.Tensor,
    non_rigid: bool = True,
    cfg: AlignmentConfig = AlignmentConfig(),
) -> AlignedDepth:
    """Rigid then (optionally) non-rigid alignment of ``source_depth`` to the rendered ``target_depth``.

    Works under ``torch.inference_mode()`` callers: the Adam stage leaves inference mode and enables grad locally,
    on clones of the inputs made outside inference mode.
    """
    with torch.inference_mode(False), torch.enable_grad():
        src_HW, tgt_HW = source_depth_HW.detach().float().clone(), target_depth_HW.detach().float().clone()
        mask_HW = target_mask_HW.detach().bool().clone()
        K_33, w2c_44 = K_33.detach().float().clone(), w2c_44.detach().float().clone()
        rigid_HW = rigid_align_depth(src_HW, tgt_HW, mask_HW, cfg=cfg)
        if not non_rigid:
            return AlignedDepth(rigid=rigid_HW, final=rigid_HW)
        final_HW = _refine_scale_map(rigid_HW, tgt_HW, mask_HW, K_33, torch.inverse(w2c_44), cfg)
    return AlignedDepth(rigid=rigid_HW.detach(), final=final_HW)
