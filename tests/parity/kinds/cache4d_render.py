"""``cache4d_render``: official ``Cache4D`` built from a video as ``gen3c_dynamic.py`` builds it, then
``render_cache(..., start_frame_idx=s)``."""

from __future__ import annotations

import torch

from gen3c_dist.geometry.cache4d import Cache4D


def run_case(case) -> dict[str, torch.Tensor]:
    t = case.input_tensors()
    cache = Cache4D(
        t["input_image"],
        t["input_depth"],
        t["input_mask"],
        t["input_w2c"],
        t["input_intrinsics"],
        filter_points_threshold=float(case.inputs["filter_points_threshold"]),
        foreground_masking=bool(case.inputs["foreground_masking"]),
    )
    if cache.num_frames != int(case.inputs["num_source_frames"]):
        raise AssertionError(f"cache4d_render: {cache.num_frames} source frames, the JSON says "
                             f"{case.inputs['num_source_frames']}")
    images, masks = cache.render(t["target_w2cs"][None], t["target_intrinsics"][None],
                                 start_frame_idx=int(case.inputs["start_frame_idx"]))
    out = {"rendered_warp_images": images, "rendered_warp_masks": masks, "input_points": cache.points,
           "cache_input_mask": cache.masks[:, 0].float()}
    if cache.boundary is not None:
        out["boundary_mask"] = cache.boundary.float()
    return out
