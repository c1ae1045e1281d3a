"""``<stem>.partial/``: what a rerun needs to continue a multi-chunk video after its last complete chunk.

One file per chunk (``chunk<k>.safetensors``: its new frames, cache preview and latent) plus ``state.safetensors``
(the cache buffers, the warp-noise RNG and ``chunks_done``), so saving after chunk k writes chunk k's frames
once instead of every frame so far. ``state.safetensors`` is replaced after the chunk file is complete, and
``chunks_done`` in it is the only thing trusted: a chunk file without a state that counts it is ignored.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from safetensors import safe_open

from gen3c_dist.errors import InputError
from gen3c_dist.runner.outputs import ChunkResult, write_safetensors


@dataclasses.dataclass
class Resumed:
    chunks: list[ChunkResult]
    state: dict[str, torch.Tensor]  # the conditioner's state after the last complete chunk


class PartialState:
    def __init__(self, stem: Path, fingerprint: str) -> None:
        self.folder = stem.with_name(stem.name + ".partial")
        self.state_file = self.folder / "state.safetensors"
        self.fingerprint = fingerprint

    def chunk_file(self, index: int) -> Path:
        return self.folder / f"chunk{index}.safetensors"

    def load(self) -> Optional[Resumed]:
        if not self.state_file.exists():
            return None
        meta, state = _read(self.state_file)
        if meta.get("fingerprint") != self.fingerprint:  # checked before models load; this is the backstop
            raise InputError(f"{self.folder} was made with other settings; to keep it, choose a new output.name; "
                             "to replace it, add output.overwrite=true")
        chunks = []
        for index in range(int(meta["chunks_done"])):
            _, tensors = _read(self.chunk_file(index))
            chunks.append(ChunkResult(tensors["frames"].numpy(), tensors["preview"].numpy(), tensors["latent"]))
        return Resumed(chunks=chunks, state=state)

    def stored_fingerprint(self) -> Optional[dict]:
        """The fingerprint table the state on disk was made with; None without a state, {} for an older
        format (a bare digest)."""
        if not self.state_file.exists():
            return None
        with safe_open(str(self.state_file), framework="pt") as handle:
            text = (handle.metadata() or {}).get("fingerprint", "")
        try:
            parts = json.loads(text)
        except json.JSONDecodeError:
            return {}
        return parts if isinstance(parts, dict) else {}

    def chunks_saved(self) -> int:
        """How many chunks the state on disk counts (0 without one); reads the header only."""
        if not self.state_file.exists():
            return 0
        with safe_open(str(self.state_file), framework="pt") as handle:
            return int((handle.metadata() or {}).get("chunks_done", 0))

    def save(self, index: int, chunk: ChunkResult, state: dict[str, torch.Tensor]) -> None:
        """After chunk ``index`` completes: its file first, then the state that makes it count."""
        self.folder.mkdir(parents=True, exist_ok=True)
        tensors = {"frames": torch.from_numpy(chunk.frames), "preview": torch.from_numpy(chunk.preview), "latent": chunk.latent}
        write_safetensors(self.chunk_file(index), tensors)
        write_safetensors(self.state_file, state, metadata={"fingerprint": self.fingerprint, "chunks_done": str(index + 1)})

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def _read(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata() or {}, {k: handle.get_tensor(k) for k in handle.keys()}
