"""``dynamic_inputs``: the official ``load_data_auto_detect`` on a shipped directory or ``.pt`` (``<case>.input/``)."""

from __future__ import annotations

import torch

from gen3c_dist.conditioning.video_inputs import load_dynamic_inputs

DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16}


def check_dtypes(case, out: dict[str, torch.Tensor]) -> None:
    """The loader must return the dtypes the official one returned (the safetensors copies are all float32)."""
    for name, dtype in case.meta["outputs"]["dtypes"].items():
        if out[name].dtype != DTYPES[dtype]:
            raise AssertionError(f"{name}: dtype {out[name].dtype}, the official loader returned {dtype}")


def run_case(case) -> dict[str, torch.Tensor]:
    loaded = load_dynamic_inputs(case.json_path.parent / case.inputs["path"])
    outputs = case.meta["outputs"]
    if type(loaded).__name__ != outputs["container"]:
        raise AssertionError(f"container: {type(loaded).__name__}, the official loader returned {outputs['container']}")
    out = dict(zip(outputs["order"], loaded))
    check_dtypes(case, out)
    return out
