"""Output files, each written under a temporary name in the same folder and renamed once complete.

A crash therefore never leaves a file with the final name that is only partly written, and "the final name
exists" is the test for "this output is complete" that batch reruns and resumption rely on.

:class:`VideoOutputs` is the lead's set of files for one video, fed chunk by chunk (on the background writer
when overlap is on): each chunk's frames go into the streaming mp4 (and its renders into the preview mp4) as
soon as the chunk is decoded; :meth:`VideoOutputs.finish` closes them, writes the latents, and writes the JSON
record last, whose presence marks the video complete.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import imageio
import numpy as np
import torch
from safetensors.torch import save_file

from gen3c_dist.errors import InputError
from gen3c_dist.runner.leftovers import temporary_name


# Files are created with the mode the umask gives (as open() does); safetensors' writer creates them 0600, so
# they are set explicitly. Read once, at import, on the main thread: os.umask can only be read by setting it.
_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK


def temporary_sibling(final: Path) -> Path:
    """A hidden name beside ``final`` with the same suffix (writers infer the format from it), unique per process
    and host; one left by a killed run is removed at the next start (:mod:`gen3c_dist.runner.leftovers`)."""
    return final.with_name(temporary_name(final.stem, final.suffix))


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield :func:`temporary_sibling` of ``final``; rename it to ``final`` on success, remove it otherwise."""
    final = Path(final)
    tmp = temporary_sibling(final)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


class Mp4Stream:
    """An H.264 mp4 written chunk by chunk under a temporary name and renamed by :meth:`finish`.

    The official writer settings (spec 1.4 step 6): quality 5, no macro-block resizing. Lets the frames of chunk
    k be encoded while chunk k+1 is denoised; :meth:`abort` removes the partial file.
    """

    def __init__(self, final: Path, *, fps: int) -> None:
        self.final, self.fps = Path(final), fps
        self.tmp = temporary_sibling(self.final)
        self._writer = None
        self.frames = 0

    def append(self, frames_THW3: np.ndarray) -> None:
        if frames_THW3.dtype != np.uint8 or frames_THW3.ndim != 4 or frames_THW3.shape[-1] != 3:
            raise ValueError(f"video frames must be uint8 [T, H, W, 3], got {frames_THW3.dtype} {frames_THW3.shape}")
        if self._writer is None:
            height, width = frames_THW3.shape[1:3]
            self._writer = imageio.get_writer(
                self.tmp, format="mp4", fps=self.fps, quality=5, macro_block_size=1,
                ffmpeg_params=["-s", f"{width}x{height}"], output_params=["-f", "mp4"],
            )
        for frame_HW3 in frames_THW3:
            self._writer.append_data(frame_HW3)
        self.frames += len(frames_THW3)

    def finish(self) -> Path:
        if self._writer is None:
            raise ValueError(f"{self.final}: no frames were written")
        self._writer.close()
        self._writer = None
        os.replace(self.tmp, self.final)
        return self.final

    def abort(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
            self._writer = None
        with contextlib.suppress(FileNotFoundError):
            self.tmp.unlink()


def write_json(final: Path, record: dict) -> None:
    with atomic_path(final) as tmp:
        tmp.write_text(json.dumps(record, indent=1, sort_keys=True, default=str))


def write_safetensors(final: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    with atomic_path(final) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        os.chmod(tmp, FILE_MODE)


def resolve_output_stem(output_dir: str | os.PathLike, name: str) -> Path:
    """``output_dir / name``, refusing names that leave the folder (``../x``, absolute paths, empty names)."""
    root = Path(output_dir).resolve()
    if not name or name.strip() != name or "\x00" in name:
        raise InputError(f"output name {name!r} is empty or has surrounding whitespace")
    candidate = (root / name).resolve()
    if Path(name).is_absolute() or root not in candidate.parents:
        raise InputError(f"output name {name!r} escapes the output folder {root}")
    return candidate


def check_writable_dir(output_dir: str | os.PathLike) -> Path:
    """Create the output folder if needed and prove it is writable, before any model loads."""
    root = Path(output_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / temporary_name("write-probe", "")
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise InputError(f"output.dir {root} is not writable: {err.strerror or err}") from err
    return root


@dataclasses.dataclass
class ChunkResult:
    """The lead's results for one chunk (the overlap frame already dropped for chunks after the first)."""

    frames: np.ndarray  # uint8 [T, H, W, 3]
    preview: np.ndarray  # uint8 cache renders [T, H, W * panels, 3]
    latent: torch.Tensor  # [1, 16, Lt, h, w] float32, CPU


class VideoOutputs:
    """``fingerprint`` (:class:`gen3c_dist.runner.fingerprint.Fingerprint`) goes into the record and the partial
    state, so a rerun can tell whether these files are its own."""

    def __init__(self, stem: Path, *, fps: int, save_latents: bool, save_buffer: bool, fingerprint: Any = None) -> None:
        self.stem = stem
        self.fingerprint = fingerprint
        self.stem.parent.mkdir(parents=True, exist_ok=True)
        self.save_latents = save_latents
        self.video = Mp4Stream(self.stem.with_suffix(".mp4"), fps=fps)
        self.preview = Mp4Stream(self.stem.with_name(self.stem.name + "_cache.mp4"), fps=fps) if save_buffer else None
        self.latents: list[torch.Tensor] = []

    def add_chunk(self, chunk: ChunkResult) -> None:
        self.video.append(chunk.frames)
        if self.preview is not None:
            self.preview.append(np.concatenate([chunk.preview, chunk.frames], axis=2))  # renders left of the video
        self.latents.append(chunk.latent)

    def finish(self, record_fn: Callable[[int], dict]) -> list[Path]:
        """Close every file; ``record_fn(frames)`` builds the record once everything else is written.

        Returns the paths written, the record last."""
        written = [self.video.finish()]
        if self.preview is not None:
            written.append(self.preview.finish())
        if self.save_latents:
            latents = self.stem.with_name(self.stem.name + "_latents.safetensors")
            write_safetensors(latents, {f"chunk{i}": t for i, t in enumerate(self.latents)})
            written.append(latents)
        record = self.stem.with_suffix(".json")
        write_json(record, record_fn(self.video.frames))
        return written + [record]

    def abort(self) -> None:
        self.video.abort()
        if self.preview is not None:
            self.preview.abort()
