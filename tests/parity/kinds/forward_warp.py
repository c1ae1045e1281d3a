"""``forward_warp``: official ``forward_warp`` on the "depth" or the "world points" path."""

from __future__ import annotations

import torch

from gen3c_dist.geometry.warp import forward_warp


def run_case(case) -> dict[str, torch.Tensor]:
    t = case.input_tensors()
    path = case.config["path"]
    if path not in ("depth", "world"):
        raise ValueError(f"config.path: unknown {path!r}")
    if not case.config.get("is_depth", True):
        raise ValueError("config.is_depth: only z-depth is supported (the official default)")
    source = (
        {"world_points_BHW3": t["world_points1"]}
        if path == "world"
        else {"depth_B1HW": t["depth1"], "source_w2c_B44": t["transformation1"], "source_K_B33": t["intrinsic1"]}
    )
    boundary = t["boundary_mask"].bool() if case.config["foreground_masking"] else None
    result = forward_warp(
        t["frame1"],
        target_w2c_B44=t["transformation2"],
        target_K_B33=t["intrinsic2"],
        valid_mask_B1HW=t["mask1"],
        render_depth=bool(case.config["render_depth"]),
        boundary_mask_BHW=boundary,
        is_image=bool(case.config.get("is_image", True)),
        **source,
    )
    out = {"warped_frame": result.image, "warped_mask": result.mask, "flow12": result.flow}
    if result.depth is not None:
        out["warped_depth"] = result.depth
    return out
