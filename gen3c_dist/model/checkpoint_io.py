"""Reading DiT checkpoints without pickle: official ``model.pt``, safetensors files, sharded indexes, and folders.

A :class:`CheckpointReader` exposes key names and shapes before any tensor is read, so key accounting and
shape checks run before heavy work, and tensors are then fetched one at a time (``torch.load(mmap=True)`` or
``safe_open``), so loading the 7B weights never holds two copies of the model in memory.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Optional

import torch
from safetensors import SafetensorError, safe_open

from gen3c_dist.model.safe_load import DIT_PICKLE_WAY_ON, DIT_WAY_ON, CheckpointError, refusal, safe_torch_load, safetensors_problem

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
OFFICIAL_NAME = "model.pt"


__all__ = ["CONFIG_NAME", "INDEX_NAME", "OFFICIAL_NAME", "SINGLE_NAME", "CheckpointError", "CheckpointReader"]


class CheckpointReader:
    """Key -> tensor access over one checkpoint, whatever its on-disk layout.

    ``label`` names the input in errors (``checkpoints.dit`` in a run, ``--source`` in the converter).
    ``state`` is a state dict the caller already holds (the converter's ``--allow-pickle``); then ``path`` is
    only its name in messages.
    """

    def __init__(self, path: str | os.PathLike, *, label: str = "checkpoint", state: Optional[dict] = None) -> None:
        self.path = Path(path)
        self.label = label
        if state is None and not self.path.exists():
            raise CheckpointError(f"{label} {self.path}: no such file or folder")
        self.config: dict | None = None
        self._shapes: dict[str, tuple[int, ...]] = {}
        self._torch_state: dict | None = None
        self._safetensor_files: dict[str, Path] = {}  # key -> file
        self._open_files: dict[Path, object] = {}
        if state is None:
            self._open()
        else:
            self._use_state(state, self.path)

    # ---- layout detection ----------------------------------------------------------------------------------
    def _open(self) -> None:
        path = self.path
        if path.is_dir():
            if (path / CONFIG_NAME).exists():
                self.config = _read_json(path / CONFIG_NAME)
            for name, opener in ((INDEX_NAME, self._open_index), (SINGLE_NAME, self._open_safetensors), (OFFICIAL_NAME, self._open_torch)):
                if (path / name).exists():
                    opener(path / name)
                    return
            raise CheckpointError(f"{self.label} {path}: the folder holds none of {INDEX_NAME}, {SINGLE_NAME}, "
                                  f"{OFFICIAL_NAME}; {DIT_WAY_ON}")
        if path.name.endswith(".index.json"):
            self._open_index(path)
        elif path.suffix == ".safetensors":
            self._open_safetensors(path)
        else:
            self._open_torch(path)

    def _open_torch(self, file: Path) -> None:
        # TransformerEngine stores `_extra_state` as BytesIO; allow exactly that class, nothing else (no pickle).
        state = safe_torch_load(file, label=self.label, way_on=DIT_WAY_ON, pickle_way_on=DIT_PICKLE_WAY_ON,
                                allowed=[io.BytesIO], mmap=True)
        self._use_state(state, file)

    def _use_state(self, state: object, file: Path) -> None:
        if isinstance(state, dict) and isinstance(state.get("model"), dict):  # official layout (spec 2.8)
            state = state["model"]
        elif isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise refusal(self.label, file, f"holds a {type(state).__name__}, not a state dict", DIT_WAY_ON)
        self._torch_state = state
        self._shapes = {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}
        self._non_tensor_keys = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]

    def _open_safetensors(self, file: Path) -> None:
        for key, shape in _safetensors_shapes(file, self.label).items():
            self._shapes[key] = shape
            self._safetensor_files[key] = file

    def _open_index(self, index_file: Path) -> None:
        index = _read_json(index_file)
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"checkpoint index {index_file}: no 'weight_map' table")
        for shard_name in sorted(set(weight_map.values())):
            shard = index_file.parent / shard_name
            if not shard.exists():
                raise CheckpointError(f"{self.label} {index_file}: shard {shard_name} is missing; {DIT_WAY_ON}")
            self._open_safetensors(shard)
        unlisted = sorted(set(self._shapes) - set(weight_map))
        absent = sorted(k for k, f in weight_map.items() if k not in self._shapes)
        if unlisted or absent:
            raise CheckpointError(f"checkpoint index {index_file} disagrees with its shards: unlisted {unlisted[:5]}, absent {absent[:5]}")

    # ---- access ----------------------------------------------------------------------------------------------
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Tensor keys and shapes (read without loading any tensor data)."""
        return dict(self._shapes)

    def non_tensor_keys(self) -> list[str]:
        """Keys whose values are not tensors (TransformerEngine ``_extra_state`` blobs in official files)."""
        return list(getattr(self, "_non_tensor_keys", []))

    def get(self, key: str) -> torch.Tensor:
        if self._torch_state is not None:
            return self._torch_state[key]
        file = self._safetensor_files[key]
        if file not in self._open_files:
            self._open_files[file] = safe_open(str(file), framework="pt", device="cpu")
        return self._open_files[file].get_tensor(key)  # type: ignore[attr-defined]


def _read_json(file: Path) -> dict:
    try:
        return json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{file}: not readable JSON ({err}); {DIT_WAY_ON}") from None


def _safetensors_shapes(file: Path, label: str) -> dict[str, tuple[int, ...]]:
    """Shapes from the header, after checking the header and that the file is as long as it says (truncation)."""
    problem = safetensors_problem(file)
    if problem is not None:
        raise refusal(label, file, problem, DIT_WAY_ON)
    try:
        with safe_open(str(file), framework="pt", device="cpu") as handle:
            return {k: tuple(handle.get_slice(k).get_shape()) for k in handle.keys()}
    except (SafetensorError, OSError) as err:
        raise refusal(label, file, f"damaged (safetensors: {err})", DIT_WAY_ON) from None
