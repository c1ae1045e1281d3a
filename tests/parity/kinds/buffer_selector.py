"""``buffer_selector``: official ``Cache3D_BufferSelector`` (gen3c_multiview.py) built from N key frames, then
``render_cache`` for one chunk: the selected pair after the coverage rule, plus the all-N renders as debug."""

from __future__ import annotations

import torch

from gen3c_dist.conditioning.multiview_inputs import default_target_intrinsics
from gen3c_dist.geometry.buffer_selector import KeyFrameCache


def run_case(case) -> dict[str, torch.Tensor]:
    t = case.input_tensors()
    cache = KeyFrameCache(
        t["images_key_frames"][None],
        t["depth_key_frames"][None],
        t["mask_key_frames"][None],
        t["w2cs_key_frames"][None],
        t["K_key_frames"][None],
        frame_buffer_max=int(case.config["frame_buffer_max"]),
        mask_full_threshold=float(case.config["mask_full_threshold"]),
        filter_points_threshold=float(case.config["filter_points_threshold"]),
        foreground_masking=bool(case.config["foreground_masking"]),
    )
    w2cs_F44 = t["target_w2cs"]
    # Without Ks_all the script gives every target K_key[-1]; derive it here so the fallback itself is checked.
    Ks_F33 = t["target_intrinsics"] if case.inputs["Ks_all_present"] else \
        default_target_intrinsics(t["K_key_frames"], len(w2cs_F44))
    all_images, all_masks = cache.render_all(w2cs_F44[None], Ks_F33[None])
    images, masks = cache.render(w2cs_F44[None], Ks_F33[None])
    out = {
        "rendered_warp_images": images,
        "rendered_warp_masks": masks,
        "rendered_all_images": all_images,
        "rendered_all_masks": all_masks,
        "input_points": cache.points[0],
        "cache_input_mask": cache.masks[0, :, 0].float(),
    }
    if cache.boundary is not None:
        out["boundary_mask"] = cache.boundary[0].float()
    return out
