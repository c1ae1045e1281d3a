"""``trajectory``: official ``generate_camera_trajectory`` with its leading batch dim of 1 dropped."""

from __future__ import annotations

import torch

from gen3c_dist.geometry.camera import generate_trajectory


def run_case(case) -> dict[str, torch.Tensor]:
    t = case.input_tensors()
    w2cs_N44, Ks_N33 = generate_trajectory(
        case.inputs["trajectory"],
        camera_rotation=case.inputs["camera_rotation"],
        num_frames=int(case.inputs["num_frames"]),
        movement_distance=float(case.inputs["movement_distance"]),
        center_depth=float(case.inputs["center_depth"]),
        initial_w2c_44=t["initial_w2c"],
        initial_K_33=t["initial_intrinsics"],
    )
    return {"w2cs": w2cs_N44, "intrinsics": Ks_N33}
