"""The fingerprint of a video: everything that changes its pixels, so a rerun never keeps a stale result.

A rerun skips a complete output, or resumes a ``<name>.partial/``, only when the stored fingerprint equals the
new one; otherwise it refuses in one line naming the keys that differ (:func:`check_existing`). The
fingerprint is a table ``key -> short value`` (kept in the JSON record and the partial state), so the keys
that differ can be named, plus a digest of the whole table.

What it holds:

* every field of ``model``, ``cache``, ``tokenizer``, ``sampler``, ``text.enabled`` and ``text.max_length``, and
  the job's ``input`` and ``trajectory`` (a batch line's own values), as values;
* of every path-valued field of ``input`` and ``trajectory`` (the image, the depth file, intrinsics, a trajectory
  file, and any other field that names an existing file or folder: a video, key frames), a SHA-256 of the
  content instead of the path: moving a file does not change the result, editing it does. A folder is hashed
  file by file in sorted order, with each file's relative name;
* of every checkpoint path, its identity: the absolute path, size and modification time of the file, or of
  every file of a folder (hashing many GB would cost minutes; a changed file changes its size or mtime), plus
  ``checkpoints.random_weights`` and ``random_seed``;
* ``runtime.dtype`` as resolved for this device (``auto`` is bfloat16 on CUDA, float32 on the CPU).

What it leaves out, because it cannot change the frames beyond floating-point rounding:

* ``output.*``: where the files go, their name, and which extra files (latents, cache renders) are written;
* ``batch.*``: which lines this job makes (a line's own inputs come in through the job);
* ``parallel.*``: the layout; README "Throughput and memory" gives how close layouts agree;
* ``distributed.*``: the backend and timeouts;
* ``runtime.*`` except the dtype: the device (the same computation on another device: rounding only), and the
  speed options (offload, overlap, attention kernel, compile, CUDA graphs, the progress bar);
* ``text.cache_dir``: a cache of embeddings, keyed by the T5 model and the prompt;
* Hydra's logging settings, which are not part of the run config at all.

Free-text fields (the prompts) are values, never paths, even if a file of that name exists.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator, Optional

from gen3c_dist.config import RunConfig
from gen3c_dist.errors import InputError

VALUE_SECTIONS = ("model", "cache", "tokenizer", "sampler")
JOB_SECTIONS = ("input", "trajectory")
EXCLUDED_KEYS = frozenset({"text.cache_dir"})
TEXT_FIELDS = frozenset({"input.prompt", "input.negative_prompt"})
CHECKPOINT_PATHS = ("dit", "tokenizer_dir", "t5_dir", "moge")
_LONG_VALUE = 64  # longer values (a prompt) are kept as a hash
_BLOCK = 1 << 20


@dataclasses.dataclass(frozen=True)
class Fingerprint:
    parts: dict[str, str]

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.serialised().encode()).hexdigest()[:16]

    def serialised(self) -> str:
        return json.dumps(self.parts, sort_keys=True)

    def record(self) -> dict:
        """What the JSON record stores."""
        return {"digest": self.digest, "parts": self.parts}

    def differing(self, stored: dict[str, str]) -> list[str]:
        return sorted(key for key in set(self.parts) | set(stored) if self.parts.get(key) != stored.get(key))


def _value(value: Any) -> str:
    if isinstance(value, enum.Enum):
        value = value.value
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= _LONG_VALUE else "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:32]


def _walk(folder: Path) -> Iterator[Path]:
    """Every file below ``folder``, in sorted order of relative path."""
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(files):
            yield Path(root, name)


@functools.lru_cache(maxsize=None)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    """SHA-256 of a file, streamed; cached per (path, size, mtime), so a batch hashes a shared file once."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def content_digest(path: str | os.PathLike) -> str:
    """``sha256:<hex>`` of a file's bytes, or of a folder's files (relative names and contents, sorted)."""
    path = Path(path)
    if path.is_file():
        stat = path.stat()
        return "sha256:" + _file_digest(str(path.resolve()), stat.st_size, stat.st_mtime_ns)[:32]
    digest = hashlib.sha256()
    for file in _walk(path):
        stat = file.stat()
        digest.update(f"{file.relative_to(path).as_posix()}\0".encode())
        digest.update(_file_digest(str(file.resolve()), stat.st_size, stat.st_mtime_ns).encode())
    return "sha256:" + digest.hexdigest()[:32]


def checkpoint_identity(path: str) -> str:
    """``id:<hex>`` of the absolute path, size and mtime of a file, or of every file of a folder."""
    root = Path(os.path.expanduser(path)).resolve()
    files = [root] if root.is_file() else list(_walk(root)) if root.is_dir() else []
    digest = hashlib.sha256(str(root).encode())
    for file in files:
        stat = file.stat()
        digest.update(f"\0{file.relative_to(root) if file != root else ''}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return "id:" + digest.hexdigest()[:32]


def _is_path(key: str, value: Any) -> bool:
    return (isinstance(value, str) and not isinstance(value, enum.Enum) and key not in TEXT_FIELDS and value != ""
            and os.path.exists(value))


def _job_value(key: str, value: Any) -> str:
    if isinstance(value, (list, tuple)) and any(_is_path(key, item) for item in value):
        return _value([content_digest(item) if _is_path(key, item) else item for item in value])
    return content_digest(value) if _is_path(key, value) else _value(value)


def video_fingerprint(job: Any, cfg: RunConfig, *, dtype: str) -> Fingerprint:
    """The fingerprint of ``job`` (a :class:`gen3c_dist.runner.jobs.VideoJob`) under ``cfg``; ``dtype`` is the
    resolved ``runtime.dtype``."""
    parts: dict[str, str] = {}
    for section in VALUE_SECTIONS:
        for name, value in dataclasses.asdict(getattr(cfg, section)).items():
            parts[f"{section}.{name}"] = _value(value)
    for name in ("enabled", "max_length"):
        parts[f"text.{name}"] = _value(getattr(cfg.text, name))
    for section in JOB_SECTIONS:
        sub = getattr(job, section)
        for field in dataclasses.fields(sub):
            key = f"{section}.{field.name}"
            parts[key] = _job_value(key, getattr(sub, field.name))
    for name, value in dataclasses.asdict(cfg.checkpoints).items():
        is_path = name in CHECKPOINT_PATHS and value is not None
        parts[f"checkpoints.{name}"] = checkpoint_identity(value) if is_path else _value(value)
    parts["runtime.dtype"] = _value(dtype)
    return Fingerprint({key: value for key, value in parts.items() if key not in EXCLUDED_KEYS})


# ---- what a rerun does with the outputs already there --------------------------------------------------------
def output_files(stem: Path) -> list[Path]:
    """Every file a video may have written, its record first (so a half-removed output is never complete)."""
    return [stem.with_suffix(".json"), stem.with_suffix(".mp4"), stem.with_name(stem.name + "_cache.mp4"),
            stem.with_name(stem.name + "_latents.safetensors")]


def remove_outputs(stem: Path) -> bool:
    """``output.overwrite=true``: remove the previous outputs of ``stem`` and its partial state."""
    removed = False
    for file in output_files(stem):
        if file.exists():
            file.unlink()
            removed = True
    partial = stem.with_name(stem.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
        removed = True
    return removed


def _refusal(where: Path, keys: list[str]) -> InputError:
    shown = ", ".join(keys[:8]) + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")
    verb = "differs" if len(keys) == 1 else "differ"
    return InputError(f"{where} was made with other settings ({shown} {verb}); to keep it, choose a new "
                      "output.name; to replace it, add output.overwrite=true")


def stored_record_parts(record_file: Path) -> Optional[dict]:
    try:
        record = json.loads(record_file.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    stored = record.get("fingerprint") if isinstance(record, dict) else None
    return stored.get("parts") if isinstance(stored, dict) and isinstance(stored.get("parts"), dict) else None


def check_existing(stem: Path, fingerprint: Fingerprint, partial_parts: Optional[dict]) -> bool:
    """True when ``stem`` is complete with this fingerprint (skip it); False when it is to be made (or resumed).

    ``partial_parts``: the fingerprint stored in ``<stem>.partial/`` (None without one). Raises one
    :class:`InputError` naming the differing keys when what is there was made with other settings.
    """
    record, video = stem.with_suffix(".json"), stem.with_suffix(".mp4")
    if record.exists() and video.exists():
        stored = stored_record_parts(record)
        if stored is None:
            raise _refusal(record, ["fingerprint (the record has none: an older gen3c_dist made it)"])
        if stored != fingerprint.parts:
            raise _refusal(record, fingerprint.differing(stored))
        return True
    partial = stem.with_name(stem.name + ".partial")
    if partial_parts == {}:
        raise _refusal(partial, ["fingerprint (its state has none: an older gen3c_dist made it)"])
    if partial_parts is not None and partial_parts != fingerprint.parts:
        raise _refusal(partial, fingerprint.differing(partial_parts))
    return False
