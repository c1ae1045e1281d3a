"""``vipe_inputs``: the official ``vipe_utils.load_vipe_data`` on a shipped ViPE folder (``<case>.vipe/``)."""

from __future__ import annotations

import torch

from gen3c_dist.conditioning.vipe_inputs import load_vipe_arrays
from tests.parity.kinds.dynamic_inputs import check_dtypes

NAMES = ("frames", "depth", "mask", "w2c", "K")


def run_case(case) -> dict[str, torch.Tensor]:
    inputs = case.inputs
    loaded = load_vipe_arrays(
        str(case.json_path.parent / inputs["path"]),
        int(inputs["starting_frame_idx"]),
        resize_hw=tuple(inputs["resize_hw"]),
        crop_hw=tuple(inputs["crop_hw"]),
        num_frames=int(inputs["num_frames"]),
        read_mask=bool(inputs["read_mask"]),
        clip_index=int(inputs["video_idx"]),
    )
    out = dict(zip(NAMES, loaded))
    check_dtypes(case, out)
    full_shapes = case.meta["outputs"].get("full_shapes", {})
    for name, tensor in out.items():
        if name in full_shapes and list(tensor.shape) != full_shapes[name]:
            raise AssertionError(f"{name}: shape {list(tensor.shape)}, the official loader gave {full_shapes[name]}")
    step = inputs.get("subsample")
    if step:
        for name in step["applies_to"]:
            out[name + "_sub"] = out.pop(name)[:, :, :: step["rows_step"], :: step["cols_step"]]
    return out
