"""Build the DiT and fill it from a checkpoint with strict key accounting.

Every checkpoint key is either consumed by a model parameter or matched by :data:`IGNORED_KEY_PATTERNS`;
every model parameter is filled; shapes agree. Anything else is a :class:`CheckpointError` naming the file and
the keys, raised after reading only the key table, before any tensor is loaded. The model is built on the meta
device and parameters are assigned one at a time, so peak memory stays at one copy of the weights.
"""

from __future__ import annotations

import dataclasses
import os
import re

import torch

from gen3c_dist.config import ModelConfig
from gen3c_dist.model.checkpoint_io import CheckpointError, CheckpointReader
from gen3c_dist.model.dit import GEN3CDiT

OFFICIAL_PREFIX = "net."
# logvar.* is the training-time loss weighting head; `_extra_state` is TransformerEngine FP8 metadata;
# pos_embedder.seq is the RoPE position buffer (an arange we rebuild). None of them affects inference.
IGNORED_KEY_PATTERNS = (r"^logvar\.", r"(^|\.)_extra_state$", r"^pos_embedder\.seq$")


def strip_official_prefix(key: str) -> str:
    return key[len(OFFICIAL_PREFIX):] if key.startswith(OFFICIAL_PREFIX) else key


def is_ignored(name: str) -> bool:
    return any(re.search(p, name) for p in IGNORED_KEY_PATTERNS)


def plan_load(reader: CheckpointReader, model_shapes: dict[str, tuple[int, ...]]) -> dict[str, str]:
    """Map model parameter name -> checkpoint key, or raise listing every problem at once."""
    source = reader.path
    mapping: dict[str, str] = {}
    unexpected = []
    for key in reader.shapes():
        name = strip_official_prefix(key)
        if name in model_shapes:
            if name in mapping:
                raise CheckpointError(f"checkpoint {source}: parameter {name} appears twice ({mapping[name]}, {key})")
            mapping[name] = key
        elif not is_ignored(name):
            unexpected.append(key)
    unexpected += [k for k in reader.non_tensor_keys() if not is_ignored(strip_official_prefix(k))]
    missing = sorted(set(model_shapes) - set(mapping))
    file_shapes = reader.shapes()
    wrong_shape = [
        f"{mapping[n]}: file {file_shapes[mapping[n]]} vs model {model_shapes[n]}"
        for n in sorted(mapping)
        if tuple(file_shapes[mapping[n]]) != tuple(model_shapes[n])
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} model parameters missing from the file (first: {missing[:5]})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (first: {sorted(unexpected)[:5]})")
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} shape mismatches (first: {wrong_shape[:3]})")
    if problems:
        raise CheckpointError(
            f"checkpoint {source} does not match the configured GEN3C model "
            f"(is it another model, or does the model config not match it?): " + "; ".join(problems)
        )
    return mapping


def config_from_checkpoint(reader: CheckpointReader, requested: ModelConfig | None) -> ModelConfig:
    """The config stored beside a converted checkpoint, checked against the requested one."""
    if reader.config is None:
        if requested is None:
            raise CheckpointError(f"checkpoint {reader.path} carries no config.json; pass a model preset")
        return requested
    stored = ModelConfig(**reader.config["model"])
    if requested is not None and dataclasses.asdict(requested) != dataclasses.asdict(stored):
        diff = {k: (v, getattr(stored, k)) for k, v in dataclasses.asdict(requested).items() if getattr(stored, k) != v}
        raise CheckpointError(f"checkpoint {reader.path}: model config does not match its config.json (requested, stored): {diff}")
    return stored


def load_dit(
    path: str | os.PathLike,
    config: ModelConfig | None,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    label: str = "checkpoint",
) -> GEN3CDiT:
    """Build the DiT on the meta device and fill it from ``path`` (any layout :class:`CheckpointReader` reads);
    ``label`` names the input in errors (the config key)."""
    reader = CheckpointReader(path, label=label)
    config = config_from_checkpoint(reader, config)
    with torch.device("meta"):
        model = GEN3CDiT(config)
    model_shapes = {name: tuple(p.shape) for name, p in model.named_parameters()}
    mapping = plan_load(reader, model_shapes)
    state = {name: _aligned(reader.get(key).to(device=device, dtype=dtype)) for name, key in mapping.items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval().requires_grad_(False)


def _aligned(tensor: torch.Tensor, alignment: int = 64) -> torch.Tensor:
    """A copy when the tensor is a view at an unaligned address (safetensors shards hand those out).

    CPU BLAS picks its kernel by pointer alignment, so without this the same weights give outputs that differ
    in the last bits depending on how the checkpoint file happened to be laid out.
    """
    return tensor.clone() if tensor.data_ptr() % alignment else tensor


def random_dit(config: ModelConfig, *, seed: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> GEN3CDiT:
    """A DiT with seeded random weights (tiny preset, demo, benchmarks); the frames it makes are not meaningful.

    Every weight is drawn from a CPU generator, so the same seed gives the same model on any device.
    Linear weights are N(0, 1/fan_in); norm weights 1; position tables N(0, 1). The model is built on the meta
    device, so the global RNG is never touched: the runner builds it in a thread beside other seeded work.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        model = GEN3CDiT(config)
    # Allocated directly on the target device and dtype, filled one float32 tensor at a time: the 7B shape needs
    # its 14.5 GB of bf16 and not a 29 GB float32 copy first (the same values: copy_ rounds like .to(dtype)).
    model = model.to(dtype=dtype).to_empty(device=device)  # the cast on meta is free; to_empty then allocates bf16
    for name, param in model.named_parameters():
        if param.ndim == 2 and "pos_emb" not in name:
            values = torch.randn(param.shape, generator=generator) / param.shape[1] ** 0.5
        elif "pos_emb" in name:
            values = torch.randn(param.shape, generator=generator)
        else:
            values = torch.ones(param.shape)
        param.data.copy_(values)
    return model.eval().requires_grad_(False)
