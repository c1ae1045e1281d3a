"""``cache_render``: official ``Cache3D_Buffer`` built from one RGB-D frame, then ``render_cache``."""

from __future__ import annotations

import torch

from gen3c_dist.geometry.cache3d import Cache3D


def build_cache(case, t: dict[str, torch.Tensor]) -> Cache3D:
    """The cache as the case's config describes it (shared with ``cache_update``)."""
    return Cache3D(
        t["input_image"],
        t["input_depth"],
        t["input_w2c"],
        t["input_intrinsics"],
        generator=torch.Generator().manual_seed(0),
        frame_buffer_max=int(case.config["frame_buffer_max"]),
        filter_points_threshold=float(case.config["filter_points_threshold"]),
        foreground_masking=bool(case.config["foreground_masking"]),
        noise_aug_strength=float(case.config["noise_aug_strength"]),
    )


def run_case(case) -> dict[str, torch.Tensor]:
    t = case.input_tensors()
    cache = build_cache(case, t)
    images, masks = cache.render(t["target_w2cs"][None], t["target_intrinsics"][None])
    out = {"rendered_warp_images": images, "rendered_warp_masks": masks, "input_points": cache.points[0, 0]}
    if cache.masks is not None:
        out["input_mask"] = cache.masks[0, 0, 0].float()
    if cache.boundary is not None:
        out["boundary_mask"] = cache.boundary[0].float()
    return out
