"""Pinhole camera arithmetic in the official operation order (spec sections 7.2, 7.3 and 7.5).

Pixels have integer coordinates (no +0.5): pixel (x, y) has the ray K^-1 [x, y, 1]. Depth is z-depth.

Why the operation order is kept. The official ``forward_warp_utils_pytorch`` writes every product of the camera
model as a batch of column vectors: ``K^-1[:, None, None] @ [x, y, 1][..., None]`` for the rays
(``get_camera_rays``, ``compute_transformed_points``; ``unproject_points`` does the same product per masked
pixel), then ``T[:, None, None] @ [X; 1][..., None]`` and ``K[:, None, None] @ X_cam`` for the projection
(``project_points``). The row-vector form ``[X; 1] @ T^T`` is the same mathematics, but torch runs it through
other matmul kernels, chosen by batch and image size, that round differently: issue 10 saw up to 2.3e-5 px; on
a 2-core AMD EPYC (AVX2) only single-item calls differed, by up to 6e-5 in K X at 88x160. That matters because
the splat is discontinuous at integer positions (the integer-landing quirk of
:func:`gen3c_dist.geometry.warp.splat_bilinear`): at the source pose (frame 0 of every trajectory, the last
frame of a spiral) and along pure x/y moves with ``no_rotation``, points land on integer pixels up to rounding,
and one ulp decides whether a point also sends ~1e-7 weights to its neighbours, which the soft z-buffer can make
dominant next to a hole (the fixtures avoid those poses for this reason: KINDS_geometry.md, "Why some
configurations are absent"). In the official form each point goes through the same 3x3 and 4x4 products as in
the official code, whatever the batch; ``benchmarks/source_pose_render.py`` measures how much frame 0 depends
on rounding.
"""

from __future__ import annotations

import torch


def pixel_grid(height: int, width: int, *, device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Integer pixel coordinates [2, H, W]: channel 0 is x, channel 1 is y."""
    ys, xs = torch.meshgrid(
        torch.arange(height, device=device, dtype=dtype), torch.arange(width, device=device, dtype=dtype), indexing="ij"
    )
    return torch.stack([xs, ys], dim=0)


def pixel_rays(K_B33: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Unnormalised rays K^-1 [x, y, 1] [B, H, W, 3] at integer pixel coordinates, K^-1 taken in fp32."""
    xs_HW, ys_HW = pixel_grid(height, width, device=K_B33.device)
    homo_HW31 = torch.stack([xs_HW, ys_HW, torch.ones_like(xs_HW)], dim=-1)[..., None]
    K_inv_B33 = torch.linalg.inv(K_B33.to(torch.float32))
    # Column-vector products, the official order (see the module docstring).
    return torch.matmul(K_inv_B33[:, None, None], homo_HW31[None])[..., 0]


def apply_transform(points_BHW3: torch.Tensor, T_B44: torch.Tensor) -> torch.Tensor:
    """4x4 transform of points [B, H, W, 3] through homogeneous coordinates: T [X; 1] per point, first 3 rows."""
    homo_BHW41 = torch.cat([points_BHW3, torch.ones_like(points_BHW3[..., :1])], dim=-1)[..., None]
    # Column-vector products, the official order (see the module docstring).
    return torch.matmul(T_B44[:, None, None], homo_BHW41)[..., :3, 0]


def project_to_image(cam_BHW3: torch.Tensor, K_B33: torch.Tensor) -> torch.Tensor:
    """Homogeneous image points K X_cam [B, H, W, 3] (divide by the last channel for pixels)."""
    # Column-vector products, the official order (see the module docstring).
    return torch.matmul(K_B33[:, None, None], cam_BHW3[..., None])[..., 0]


def unit_pixel_rays(K_33: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """normalize(K^-1 [x, y, 1]) [H, W, 3]; a zero-length ray keeps norm 1, as the official ``get_camera_rays``."""
    rays_HW3 = pixel_rays(K_33[None], height, width)[0]
    norm_HW1 = torch.linalg.vector_norm(rays_HW3, dim=-1, keepdim=True)
    return rays_HW3 / torch.where(norm_HW1 == 0, torch.ones_like(norm_HW1), norm_HW1)
