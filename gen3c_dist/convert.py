"""Convert an official GEN3C ``model.pt`` into sharded safetensors plus ``config.json``.

    python -m gen3c_dist.convert --source checkpoints/Gen3C-Cosmos-7B/model.pt --output checkpoints/gen3c_7b_st

The output folder is what ``checkpoints.dit`` accepts directly. Keys are written without the ``net.`` prefix,
only model parameters are kept (the ignored keys of :mod:`gen3c_dist.model.weights` are dropped), and the
source is validated against the model preset with the same strict accounting as loading. Everything is
written into a temporary sibling folder that is renamed to ``--output`` only once complete.

The source is read without unpickling anything, as the runner reads it. ``--allow-pickle`` is the one
exception, for a checkpoint that stores Python objects beside its tensors (a training run's own checkpoint):
it runs ``torch.load(weights_only=False)``, which executes whatever the file's pickle names, so use it only
for a file you trust, on a machine you trust. Its output is plain safetensors, which the runner then loads
without pickle.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from gen3c_dist.config import ModelConfig, model_preset
from gen3c_dist.model.checkpoint_io import CONFIG_NAME, INDEX_NAME, CheckpointError, CheckpointReader
from gen3c_dist.model.dit import GEN3CDiT
from gen3c_dist.model.weights import plan_load

FORMAT_VERSION = 1
DTYPES = {"keep": None, "bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}


def open_source(source: Path, *, allow_pickle: bool) -> CheckpointReader:
    if not allow_pickle or source.is_dir() or source.suffix == ".safetensors" or source.name.endswith(".json"):
        return CheckpointReader(source, label="--source")
    if not source.is_file():
        raise CheckpointError(f"--source {source}: no such file")
    state = torch.load(source, map_location="cpu", weights_only=False)  # --allow-pickle: the user trusts the file
    return CheckpointReader(source, label="--source", state=state)


def convert(source: Path, output: Path, *, config: ModelConfig, dtype: torch.dtype | None, shard_bytes: int,
            allow_pickle: bool = False) -> Path:
    if output.exists():
        raise FileExistsError(f"--output {output} already exists; remove it or choose another folder")
    reader = open_source(source, allow_pickle=allow_pickle)
    with torch.device("meta"):
        model_shapes = {n: tuple(p.shape) for n, p in GEN3CDiT(config).named_parameters()}
    mapping = plan_load(reader, model_shapes)

    staging = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        shards = _group_into_shards(mapping, reader.shapes(), shard_bytes, dtype)
        weight_map = {}
        for index, names in enumerate(shards, start=1):
            shard_name = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
            tensors = {}
            for name in names:
                tensor = reader.get(mapping[name])
                tensors[name] = (tensor if dtype is None else tensor.to(dtype)).contiguous()
            save_file(tensors, str(staging / shard_name), metadata={"format": "pt"})
            weight_map.update({name: shard_name for name in names})
            del tensors
        (staging / INDEX_NAME).write_text(json.dumps({"metadata": {"format_version": FORMAT_VERSION}, "weight_map": weight_map}, indent=1))
        (staging / CONFIG_NAME).write_text(
            json.dumps({"format_version": FORMAT_VERSION, "source": str(source), "model": dataclasses.asdict(config)}, indent=1)
        )
        staging.rename(output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return output


def _group_into_shards(
    mapping: dict[str, str], shapes: dict[str, tuple[int, ...]], shard_bytes: int, dtype: torch.dtype | None
) -> list[list[str]]:
    """Consecutive parameters packed into shards of at most ``shard_bytes`` (a single larger tensor gets its own)."""
    element_bytes = 4 if dtype is None else torch.empty((), dtype=dtype).element_size()
    shards: list[list[str]] = [[]]
    used = 0
    for name in mapping:
        size = element_bytes
        for dim in shapes[mapping[name]]:
            size *= dim
        if shards[-1] and used + size > shard_bytes:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += size
    return shards


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", required=True, type=Path, help="official model.pt (or any checkpoint the loader reads)")
    parser.add_argument("--output", required=True, type=Path, help="folder to create")
    parser.add_argument("--preset", default="gen3c_cosmos_7b", help="model preset the source must match")
    parser.add_argument("--model-config", type=Path, help="JSON of official network arguments (overrides --preset)")
    parser.add_argument("--dtype", default="keep", choices=sorted(DTYPES), help="convert tensors (default: keep)")
    parser.add_argument("--shard-size-gb", type=float, default=5.0)
    parser.add_argument("--allow-pickle", action="store_true",
                        help="unpickle the source (runs code the file names): only for a file you trust, on a "
                             "machine you trust")
    args = parser.parse_args(argv)
    try:
        if args.model_config is not None:
            config = ModelConfig.from_official(json.loads(args.model_config.read_text()))
        else:
            config = model_preset(args.preset)
        out = convert(args.source, args.output, config=config, dtype=DTYPES[args.dtype],
                      shard_bytes=int(args.shard_size_gb * 2**30), allow_pickle=args.allow_pickle)
    except (CheckpointError, FileExistsError, ValueError, OSError) as err:
        print(f"gen3c_dist.convert: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
