"""``dynamic_trajectory``: official ``generate_camera_trajectory`` with a per-frame source path (gen3c_dynamic.py)."""

from __future__ import annotations

import torch

from gen3c_dist.geometry.camera import generate_video_trajectory


def run_case(case) -> dict[str, torch.Tensor]:
    t = case.input_tensors()
    if int(case.inputs["num_frames"]) != t["initial_w2c"].shape[0]:
        raise AssertionError("dynamic_trajectory: num_frames must equal the source length (KINDS_video.md)")
    w2cs_N44, Ks_N33 = generate_video_trajectory(
        case.inputs["trajectory"],
        camera_rotation=case.inputs["camera_rotation"],
        movement_distance=float(case.inputs["movement_distance"]),
        center_depth=float(case.inputs["center_depth"]),
        source_w2c_N44=t["initial_w2c"],
        source_K_N33=t["initial_intrinsics"],
    )
    return {"w2cs": w2cs_N44, "intrinsics": Ks_N33}
