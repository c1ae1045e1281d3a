"""``cache_update``: ``Cache3D_Buffer.update_cache`` once or twice, then ``render_cache``, per the JSON protocol.

The 100-step Adam alignment is chaotic in float32, so each stage is checked on its own: the alignment runs on
the live cache (nothing inserted), then the fixture's aligned depth is inserted without alignment.
"""

from __future__ import annotations

import torch

from gen3c_dist.geometry.depth_align import AlignmentConfig
from gen3c_dist.geometry.cache3d import Cache3D
from tests.parity.kinds.cache_render import build_cache


def _alignment_config(config: dict) -> tuple[bool, AlignmentConfig]:
    method = config.get("alignment_method", "non_rigid")
    if method not in ("rigid", "non_rigid"):
        raise ValueError(f"config.alignment_method: unknown {method!r}")
    cfg = AlignmentConfig(
        num_iters=int(config["num_iters"]),
        adam_lr=float(config["adam_lr"]),
        lambda_smooth=float(config["lambda_arap"]),
        smoothing_kernel_size=int(config["smoothing_kernel_size"]),
    )
    return method == "non_rigid", cfg


def _run_update(cache: Cache3D, case, t: dict[str, torch.Tensor], u: int) -> dict[str, torch.Tensor]:
    p = f"u{u}_"
    image, w2c, K = t[p + "new_image"], t[p + "new_w2c"], t[p + "new_intrinsics"]
    out: dict[str, torch.Tensor] = {}
    if case.config.get("depth_alignment", True):
        non_rigid, cfg = _alignment_config(case.config)
        report = cache.align_new_depth(t[p + "new_depth"], w2c, K, non_rigid=non_rigid, cfg=cfg)
        out[p + "render_depth_for_alignment"] = report.render_depth
        out[p + "render_mask_for_alignment"] = report.render_mask.float()
        out[p + "rigid_aligned_depth"] = report.rigid_depth
        out[p + "aligned_depth"] = report.aligned_depth[None, None]
    cache.update(image, case.tensors[p + "aligned_depth"], w2c, K, depth_alignment=False)
    out[p + "new_points"] = cache.points[0, 0]
    if cache.masks is not None:
        out[p + "new_input_mask"] = cache.masks[0, 0, 0].float()
    return out


def run_case(case) -> dict[str, torch.Tensor]:
    t = case.input_tensors()
    cache = build_cache(case, t)
    out: dict[str, torch.Tensor] = {}
    for u in range(int(case.inputs["num_updates"])):
        out.update(_run_update(cache, case, t, u))
    images, masks = cache.render(t["target_w2cs"][None], t["target_intrinsics"][None])
    out["rendered_warp_images"] = images
    out["rendered_warp_masks"] = masks
    return out
