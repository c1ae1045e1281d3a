"""One reference fixture case: its JSON metadata, its tensors, its weights, and the pass rule.

The folder layout and the rule are fixed by ``tests/fixtures/reference/README.md``:
``<kind>/<case>.json`` + ``<case>.safetensors`` (+ ``<case>.weights.safetensors``), and a case passes when
every expected tensor ``e`` and our result ``r`` satisfy ``max|r - e| <= atol + rtol * max|e|``.
Per-tensor ``tensor_tolerances`` override the case-level pair where present (they are never looser).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file

DEFAULT_FIXTURE_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "reference"


def fixture_root() -> Path:
    """The folder named by ``GEN3C_REFERENCE_FIXTURES`` (default ``tests/fixtures/reference``)."""
    return Path(os.environ.get("GEN3C_REFERENCE_FIXTURES", DEFAULT_FIXTURE_DIR))


@dataclasses.dataclass
class FixtureCase:
    kind: str
    name: str
    json_path: Path
    meta: dict
    tensors: dict[str, torch.Tensor]

    @classmethod
    def load(cls, json_path: Path) -> "FixtureCase":
        meta = json.loads(json_path.read_text())
        tensors = load_file(str(json_path.with_suffix(".safetensors")))
        return cls(kind=json_path.parent.name, name=json_path.stem, json_path=json_path, meta=meta, tensors=tensors)

    @property
    def weights_path(self) -> Path:
        return self.json_path.with_name(self.name + ".weights.safetensors")

    def weights(self) -> dict[str, torch.Tensor]:
        return load_file(str(self.weights_path))

    @property
    def config(self) -> dict:
        return self.meta.get("config", {})

    @property
    def inputs(self) -> dict:
        """Scalar inputs (``inputs`` without its ``tensors`` table)."""
        return {k: v for k, v in self.meta.get("inputs", {}).items() if k != "tensors"}

    def input_tensors(self) -> dict[str, torch.Tensor]:
        return {k: self.tensors[k] for k in self.meta.get("inputs", {}).get("tensors", {})}

    def expected(self) -> dict[str, torch.Tensor]:
        outputs = self.meta.get("outputs", {})
        names = list(outputs.get("tensors", {})) + list(outputs.get("debug_tensors", {}))
        return {k: self.tensors[k] for k in names}

    def tolerance(self, tensor_name: str) -> tuple[float, float, float | None]:
        """(atol, rtol, mean_abs bound or None) for one expected tensor."""
        per_tensor = self.meta.get("tensor_tolerances", {}).get(tensor_name)
        if per_tensor is None:
            return float(self.meta["atol"]), float(self.meta["rtol"]), None
        return float(per_tensor["atol"]), float(per_tensor["rtol"]), per_tensor.get("mean_abs")


def discover_cases(root: Path | None = None) -> list[Path]:
    """Every case JSON under ``root``, sorted, one per ``<kind>/<case>.json``."""
    root = fixture_root() if root is None else root
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob("*/*.json"))


def mismatches(case: FixtureCase, results: dict[str, torch.Tensor]) -> list[str]:
    """Human-readable failures of the pass rule; an empty list means the case passes."""
    problems = []
    for name, expected in case.expected().items():
        if name not in results:
            problems.append(f"{name}: not produced")
            continue
        got = results[name].detach().to(torch.float64).cpu()
        want = expected.to(torch.float64)
        if got.shape != want.shape:
            problems.append(f"{name}: shape {tuple(got.shape)} != expected {tuple(want.shape)}")
            continue
        atol, rtol, mean_abs = case.tolerance(name)
        err = (got - want).abs()
        bound = atol + rtol * want.abs().max().item()
        if err.max().item() > bound:
            problems.append(f"{name}: max|r-e| = {err.max().item():.3e} > {bound:.3e}")
        if mean_abs is not None and err.mean().item() > mean_abs:
            problems.append(f"{name}: mean|r-e| = {err.mean().item():.3e} > {mean_abs:.3e}")
    return problems
