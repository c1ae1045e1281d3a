"""Loading torch checkpoint files without unpickling anything, and saying in one line why a file is refused.

``torch.load(weights_only=True)`` rebuilds tensors and plain containers only; anything else in the file's
pickle (a class instance, a function) is refused. Its messages run to a dozen lines and advise passing
``weights_only=False``, which is exactly what must not be done with a file nobody vouches for. Every refusal
here is one :class:`CheckpointError` line instead: the file, what is wrong with it, and the safe way on.

What is wrong is read from the file itself, not guessed from torch's wording alone:

* empty: 0 bytes;
* "holds pickled Python objects besides tensors (<the classes>)": the weights-only unpickler refused a global;
* "truncated": a torch zip archive without its end (the central directory), or a legacy file cut short;
* "not a torch or safetensors file": neither a zip archive nor a pickle stream at all.
"""

from __future__ import annotations

import json
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Iterable, Optional

import torch

from gen3c_dist.errors import InputError

ZIP_MAGIC = b"PK\x03\x04"
PICKLE_PROTOCOL_OPCODE = 0x80  # a legacy (non-zip) torch file starts with a pickle stream
OFFICIAL_DOWNLOAD = "download the official file again (README, 'Checkpoints')"
DIT_WAY_ON = "use the official GEN3C-Cosmos-7B model.pt (README, 'Checkpoints')"
# Only for a file that stores Python objects: one the user made (a training run's) may be theirs to trust.
DIT_PICKLE_WAY_ON = (f"{DIT_WAY_ON}, or convert a file you trust to safetensors with `python -m gen3c_dist.convert "
                     "--allow-pickle` on a machine you trust")
PICKLED = "holds pickled Python objects besides tensors"
_GLOBAL_PATTERN = re.compile(r"GLOBAL ([\w.]+)")


class CheckpointError(InputError):
    """A checkpoint that is missing, unreadable, or does not belong to the configured model."""


def refusal(label: str, file: Path, problem: str, way_on: str) -> CheckpointError:
    return CheckpointError(f"{label} {file}: {problem}; {way_on}")


def describe_unreadable(file: Path, err: BaseException, *, torchscript: bool = False) -> str:
    """Why ``torch.load(weights_only=True)`` (or ``torch.jit.load`` with ``torchscript``) could not read ``file``,
    in a few words (see the module docstring)."""
    text = str(err)
    globals_found = sorted(set(_GLOBAL_PATTERN.findall(text)))
    if globals_found:
        return f"{PICKLED} ({', '.join(globals_found)}); the loader never unpickles them"
    with open(file, "rb") as handle:
        head = handle.read(4)
    if not head:
        return "is empty (0 bytes)"
    if head == ZIP_MAGIC:
        if "central directory" in text:
            return "truncated (its torch zip archive has no end)"
        if torchscript and "constants.pkl" in text:
            return "a torch.save file, not TorchScript (torch.jit.save)"
        return "damaged (its torch zip archive cannot be read)"
    if torchscript:
        return "not a TorchScript file"
    if head[0] == PICKLE_PROTOCOL_OPCODE and isinstance(err, (EOFError, RuntimeError)) and "EOF" in text.upper():
        return "truncated (the file ends early)"
    return "not a torch or safetensors file"


class _Unreadable(Exception):
    def __init__(self, problem: str, *, pickled: bool = False) -> None:
        super().__init__(problem)
        self.problem, self.pickled = problem, pickled


def _load(file: Path, allowed: Iterable[type], mmap: bool) -> Any:
    try:
        with open(file, "rb") as handle:
            is_zip = handle.read(4) == ZIP_MAGIC
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(file, map_location="cpu", mmap=mmap and is_zip, weights_only=True)
    except OSError as err:
        raise _Unreadable(f"cannot be read ({err.strerror or err})") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, TypeError,
            AttributeError, IndexError) as err:  # what torch's reader and the weights-only unpickler raise
        problem = describe_unreadable(file, err)
        raise _Unreadable(problem, pickled=problem.startswith(PICKLED)) from None


def safe_torch_load(file: str | Path, *, label: str, way_on: str = OFFICIAL_DOWNLOAD,
                    pickle_way_on: Optional[str] = None, allowed: Iterable[type] = (), mmap: bool = False) -> Any:
    """``torch.load(file, weights_only=True)`` on the CPU; any refusal is one :class:`CheckpointError` line.

    ``label`` names the input (a config key); ``way_on`` is the advice of the line (``pickle_way_on`` instead,
    when given, for a file refused for the Python objects it stores); ``allowed`` lists the few classes a known
    format stores beside tensors (e.g. ``io.BytesIO`` for TransformerEngine state); ``mmap`` maps a zip-format
    file instead of reading it (a legacy file, which cannot be mapped, is read).
    """
    file = Path(file)
    try:
        return _load(file, allowed, mmap)
    except _Unreadable as err:
        advice = pickle_way_on if err.pickled and pickle_way_on else way_on
        raise refusal(label, file, err.problem, advice) from None


def safetensors_problem(file: Path) -> Optional[str]:
    """What is wrong with a safetensors file's header or length, or None: "not a safetensors file", "truncated"."""
    size = file.stat().st_size
    with open(file, "rb") as handle:
        header_len = int.from_bytes(handle.read(8), "little")
        if not 0 < header_len <= min(100_000_000, size - 8):
            return "not a safetensors file (no safetensors header)"
        try:
            header = json.loads(handle.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return "not a safetensors file (its header is not JSON)"
    if not isinstance(header, dict):
        return "not a safetensors file (its header is not a table)"
    try:
        data_end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (TypeError, KeyError, IndexError):
        return "damaged (its safetensors header lists no data offsets)"
    if size < 8 + header_len + data_end:
        return f"truncated ({size} bytes, its header promises {8 + header_len + data_end})"
    return None


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def weight_folder_problem(folder: Path) -> Optional[str]:
    """The first weight file of ``folder`` that is refused, as "<file>: <problem>"; None when all read.

    For a model folder that a library (transformers) loads: its own error on a bad file is a traceback, so
    on failure the files are checked here, the same way the other loaders check theirs.
    """
    for file in sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES):
        if file.suffix == ".safetensors":
            problem = safetensors_problem(file)
        else:
            try:
                _load(file, (), mmap=True)
                problem = None
            except _Unreadable as err:
                problem = err.problem
        if problem is not None:
            return f"{file.name}: {problem}"
    return None
