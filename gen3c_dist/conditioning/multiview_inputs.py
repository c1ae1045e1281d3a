"""Multi-view input: N posed RGB-D key frames and the target camera path (spec section 8.2).

Three ways in, each validated before any model loads (cheap: file headers, array shapes, camera checks), every
problem one ``ValueError`` naming the file (and key) and what is wrong:

* :func:`load_multiview_npz`: the official ``--npz_path`` layout of ``gen3c_multiview.py``;
* the same key frames with the target path from a trajectory file (``trajectory_file=``; the npz's ``w2cs_all``
  and ``Ks_all`` are then not used);
* :func:`load_key_frame_folder`: a folder of images, depth files and one ``cameras.json`` (layout in
  :mod:`gen3c_dist.conditioning.multiview_folder`), plus a trajectory file, for COLMAP / VGGT / ViPE users
  without an npz of their own. :func:`load_multiview` picks the form from the path.

Camera convention (the official one, spec section 7; KINDS_geometry.md "Conventions"):

* ``w2c`` [4, 4] is **world-to-camera**: ``X_cam = w2c @ [X_world; 1]``. Camera axes: x right, y down,
  z forward (OpenCV / COLMAP). The camera centre in the world is ``-R^T t``.
* ``K`` [3, 3] is in **pixels** of the key-frame image: ``[[fx, 0, cx], [0, fy, cy], [0, 0, 1]]``.
* Pixel (x, y) has **integer** coordinates: the centre of the top-left pixel is (0, 0), not (0.5, 0.5); its ray
  is ``K^-1 [x, y, 1]``. Depth is z-depth (distance along the optical axis), in the units of the translations.

Example: an OpenGL / Blender / NeRF ``transform_matrix`` is camera-to-world with y up and z backward. Flip the
camera's y and z axes, then invert: ``w2c = inv(c2w_gl @ diag(1, -1, -1, 1))``. A COLMAP ``images.txt`` line
(qw qx qy qz tx ty tz) already is world-to-camera in these axes: ``w2c = [[R(q), t], [0, 0, 0, 1]]``; COLMAP
puts the centre of the top-left pixel at (0.5, 0.5), so subtract 0.5 from its cx and cy.

Decisions:

* Without ``Ks_all`` every target frame gets ``K_key_frames[-1]``, the official default
  (``gen3c_multiview.py``; fixture case ``n3_f3_filter_on_fg_ks_fallback``).
* ``num_frames`` (the run's video length) cuts ``w2cs_all`` / ``Ks_all`` to their first ``num_frames`` poses, as
  the official ``[:num_video_frames]``; without it the whole path is used. Either way the length must be 120K+1.
* Images must lie in [-1, 1]; depth must be finite and >= 0 (0 means "no point", as in the cache); masks must
  be 0/1. The official code would silently clamp or misuse such values.
* Long videos: there is no cache update (official); chunk k renders targets [120k, 120k + 121)
  (:meth:`TargetPath.chunk`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch

from gen3c_dist.conditioning.multiview_folder import CAMERAS_FILE, read_key_frame_folder
from gen3c_dist.geometry.buffer_selector import FRAME_BUFFER_MAX, KeyFrameCache
from gen3c_dist.geometry.camera import load_trajectory_file
from gen3c_dist.geometry.pose_checks import check_intrinsics, check_w2c
from gen3c_dist.shapes import CHUNK_FRAMES, CHUNK_STRIDE

KEY_FRAME_KEYS = ("images_key_frames", "depth_key_frames", "mask_key_frames", "K_key_frames", "w2cs_key_frames")
PATH_KEYS = ("w2cs_all", "Ks_all")  # Ks_all is optional
IMAGE_RANGE_SLACK = 1e-3  # [-1, 1] up to rounding of a u8 -> float conversion
PathLike = Union[str, os.PathLike]


@dataclass(frozen=True)
class KeyFrames:
    """N posed RGB-D key frames, float32 on one device. Build with :func:`checked_key_frames`."""

    images_N3HW: torch.Tensor  # in [-1, 1]
    depth_N1HW: torch.Tensor  # z-depth, >= 0 (0: no point)
    mask_N1HW: torch.Tensor  # 0/1
    K_N33: torch.Tensor  # pixels
    w2c_N44: torch.Tensor  # world-to-camera, x right, y down, z forward

    @property
    def num(self) -> int:
        return self.images_N3HW.shape[0]

    @property
    def size_hw(self) -> tuple[int, int]:
        return tuple(self.images_N3HW.shape[-2:])

    def first_frame_13HW(self) -> torch.Tensor:
        """Key frame 0: chunk 0's condition frame in the official script (later chunks: the last generated)."""
        return self.images_N3HW[:1]

    def to(self, device: Union[str, torch.device]) -> "KeyFrames":
        return KeyFrames(*(t.to(device) for t in (self.images_N3HW, self.depth_N1HW, self.mask_N1HW, self.K_N33,
                                                  self.w2c_N44)))

    def cache(self, *, filter_points_threshold: float, foreground_masking: bool,
              frame_buffer_max: int = FRAME_BUFFER_MAX) -> KeyFrameCache:
        """The key-frame cache of these frames (batch 1), on their device."""
        return KeyFrameCache(self.images_N3HW[None], self.depth_N1HW[None], self.mask_N1HW[None],
                             self.w2c_N44[None], self.K_N33[None], frame_buffer_max=frame_buffer_max,
                             filter_points_threshold=filter_points_threshold, foreground_masking=foreground_masking)


@dataclass(frozen=True)
class TargetPath:
    """The cameras of every output frame, w2c [F, 4, 4] and K [F, 3, 3], F = 120K + 1. Build with
    :func:`checked_target_path`."""

    w2cs_F44: torch.Tensor
    Ks_F33: torch.Tensor

    @property
    def num_frames(self) -> int:
        return self.w2cs_F44.shape[0]

    @property
    def num_chunks(self) -> int:
        return (self.num_frames - 1) // CHUNK_STRIDE

    def chunk_frames(self, chunk_index: int) -> range:
        """Output frames of chunk k: [120k, 120k + 121); chunk k's frame 0 is chunk k-1's last frame."""
        if not 0 <= chunk_index < self.num_chunks:
            raise ValueError(f"chunk {chunk_index}: the path has {self.num_chunks} chunks")
        first = chunk_index * CHUNK_STRIDE
        return range(first, first + CHUNK_FRAMES)

    def chunk(self, chunk_index: int, device: Union[str, torch.device, None] = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Chunk k's cameras, w2c [1, 121, 4, 4] and K [1, 121, 3, 3], as a render takes them."""
        frames = self.chunk_frames(chunk_index)
        w2cs_1F44 = self.w2cs_F44[frames.start:frames.stop][None]
        Ks_1F33 = self.Ks_F33[frames.start:frames.stop][None]
        return (w2cs_1F44, Ks_1F33) if device is None else (w2cs_1F44.to(device), Ks_1F33.to(device))


@dataclass(frozen=True)
class MultiviewInputs:
    key_frames: KeyFrames
    path: TargetPath


def default_target_intrinsics(K_key_N33: torch.Tensor, num_frames: int) -> torch.Tensor:
    """[F, 3, 3]: the last key frame's K for every target, the official fallback without ``Ks_all``."""
    return K_key_N33[-1].expand(num_frames, 3, 3).clone()


def _as_N1HW(array: np.ndarray, name: str, what: str) -> np.ndarray:
    """[N, 1, H, W] from [N, 1, H, W] or [N, H, W]."""
    if array.ndim == 3:
        array = array[:, None]
    if array.ndim != 4 or array.shape[1] != 1:
        raise ValueError(f"{what} '{name}': expected shape [N, 1, H, W] or [N, H, W], got {list(array.shape)}")
    return array


def _real_array(array: np.ndarray, name: str, what: str) -> np.ndarray:
    if not (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_) or np.iscomplexobj(array):
        raise ValueError(f"{what} '{name}': must hold real numbers, got dtype {array.dtype}")
    return array.astype(np.float64)


def _check_values(images: np.ndarray, depth: np.ndarray, mask: np.ndarray, what: str, names: tuple[str, ...]
                  ) -> None:
    if not np.isfinite(images).all():
        raise ValueError(f"{what} '{names[0]}': holds NaN or infinite values")
    low, high = float(images.min()), float(images.max())
    if low < -1 - IMAGE_RANGE_SLACK or high > 1 + IMAGE_RANGE_SLACK:
        raise ValueError(f"{what} '{names[0]}': values must lie in [-1, 1] (u8 / 127.5 - 1), got [{low:g}, {high:g}]")
    bad = ~np.isfinite(depth) | (depth < 0)
    if bad.any():
        n, _, row, col = np.argwhere(bad)[0]
        raise ValueError(
            f"{what} '{names[1]}': {int(bad.sum())} pixels are NaN, infinite or negative (first: key frame {n}, "
            f"row {row}, column {col}); z-depth must be >= 0 (0 = no point; negative z suggests OpenGL axes)")
    if not np.isin(mask, (0.0, 1.0)).all():
        others = np.unique(mask[~np.isin(mask, (0.0, 1.0))])
        raise ValueError(f"{what} '{names[2]}': values must be 0 or 1, got also {others[:4].tolist()}")


def checked_key_frames(images: np.ndarray, depth: np.ndarray, mask: np.ndarray, K: np.ndarray, w2c: np.ndarray,
                       *, what: str, names: tuple[str, ...] = KEY_FRAME_KEYS) -> KeyFrames:
    """Validate raw key-frame arrays and return them as float32 tensors; ``what`` and ``names`` word the errors.

    Checks: N >= 1; every array has N entries; images [N, 3, H, W] and depth/mask [N, (1,) H, W] of one size;
    value ranges (module docstring); K and w2c through pose_checks (rigid, invertible poses; positive focals).
    """
    arrays = [_real_array(a, n, what) for a, n in zip((images, depth, mask, K, w2c), names)]
    images, depth, mask, K, w2c = arrays
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"{what} '{names[0]}': expected shape [N, 3, H, W], got {list(images.shape)}")
    if images.shape[0] == 0:
        raise ValueError(f"{what} '{names[0]}': holds no key frames (N = 0); give at least one")
    depth, mask = _as_N1HW(depth, names[1], what), _as_N1HW(mask, names[2], what)
    lengths = {n: a.shape[0] if a.ndim else 0 for n, a in zip(names, (images, depth, mask, K, w2c))}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"{what}: key-frame arrays have different lengths {lengths}; each needs one entry per frame")
    for name, array in ((names[1], depth), (names[2], mask)):
        if array.shape[-2:] != images.shape[-2:]:
            raise ValueError(f"{what} '{name}': frames are {list(array.shape[-2:])} (H, W) but the images are "
                             f"{list(images.shape[-2:])}")
    if K.shape[1:] != (3, 3) or w2c.shape[1:] != (4, 4):
        raise ValueError(f"{what}: '{names[3]}' must be [N, 3, 3] and '{names[4]}' [N, 4, 4], got "
                         f"{list(K.shape)} and {list(w2c.shape)}")
    _check_values(images, depth, mask, what, names)
    check_intrinsics(K, what=f"{what} '{names[3]}'")
    check_w2c(w2c, what=f"{what} '{names[4]}'")
    tensors = (torch.from_numpy(a).to(torch.float32) for a in (images, depth, mask, K, w2c))
    return KeyFrames(*tensors)


def _check_frame_count(num_frames: int, what: str) -> None:
    if num_frames < CHUNK_FRAMES or (num_frames - 1) % CHUNK_STRIDE:
        lower = max(1, (num_frames - 1) // CHUNK_STRIDE) * CHUNK_STRIDE + 1
        raise ValueError(f"{what}: {num_frames} target frames is not 120K+1 (121, 241, 361, ...); the nearest "
                         f"valid counts are {lower} and {lower + CHUNK_STRIDE}")


def checked_target_path(w2cs: np.ndarray, Ks: np.ndarray, *, what: str, num_frames: Optional[int] = None,
                        names: tuple[str, str] = PATH_KEYS) -> TargetPath:
    """Validate a target path (w2cs [F, 4, 4], Ks [F, 3, 3]) cut to ``num_frames`` if given; F must be 120K+1."""
    w2cs, Ks = np.asarray(w2cs, dtype=np.float64), np.asarray(Ks, dtype=np.float64)
    if w2cs.ndim != 3 or w2cs.shape[1:] != (4, 4):
        raise ValueError(f"{what} '{names[0]}': expected shape [F, 4, 4], got {list(w2cs.shape)}")
    if Ks.shape != (len(w2cs), 3, 3):
        raise ValueError(f"{what} '{names[1]}': expected shape [{len(w2cs)}, 3, 3], one K per pose of "
                         f"'{names[0]}', got {list(Ks.shape)}")
    if num_frames is not None:
        if isinstance(num_frames, bool) or not isinstance(num_frames, int) or not 0 < num_frames <= len(w2cs):
            raise ValueError(f"{what} '{names[0]}': {num_frames!r} frames are requested but it has {len(w2cs)} poses")
        w2cs, Ks = w2cs[:num_frames], Ks[:num_frames]
    _check_frame_count(len(w2cs), f"{what} '{names[0]}'")
    check_w2c(w2cs, what=f"{what} '{names[0]}'")
    check_intrinsics(Ks, what=f"{what} '{names[1]}'")
    return TargetPath(torch.from_numpy(w2cs).to(torch.float32), torch.from_numpy(Ks).to(torch.float32))


def target_path_from_file(path: PathLike, *, num_frames: int) -> TargetPath:
    """The target path from a trajectory file (.json / .npz with ``w2c`` and ``intrinsics``; see
    :func:`gen3c_dist.geometry.camera.load_trajectory_file`), which must hold exactly ``num_frames`` poses."""
    if isinstance(num_frames, bool) or not isinstance(num_frames, int):
        raise ValueError(f"trajectory file {path}: num_frames must be an integer, got {num_frames!r}")
    _check_frame_count(num_frames, f"trajectory file {path}")
    w2cs_F44, Ks_F33 = load_trajectory_file(path, num_frames=num_frames)
    return TargetPath(w2cs_F44, Ks_F33)


def _read_npz(path: Path, *, with_path: bool) -> dict[str, np.ndarray]:
    """Every array of the npz, pickle off; refuses missing and unknown keys."""
    if not path.is_file():
        raise ValueError(f"multi-view npz {path}: file does not exist")
    try:
        archive = np.load(path, allow_pickle=False)
    except (OSError, EOFError, ValueError) as err:
        raise ValueError(f"multi-view npz {path}: cannot be read as an .npz without pickle ({err})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"multi-view npz {path}: holds a single array, not an .npz archive of named arrays")
    try:
        with archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, EOFError, ValueError) as err:
        raise ValueError(f"multi-view npz {path}: an array cannot be read without pickle ({err})") from None
    required = KEY_FRAME_KEYS + (PATH_KEYS[:1] if with_path else ())
    missing = [key for key in required if key not in arrays]
    if missing:
        raise ValueError(f"multi-view npz {path}: missing keys {missing} (it has {sorted(arrays)})")
    unknown = sorted(set(arrays) - set(KEY_FRAME_KEYS) - set(PATH_KEYS))
    if unknown:
        raise ValueError(f"multi-view npz {path}: unknown keys {unknown}; the layout has {list(KEY_FRAME_KEYS)} "
                         f"and {list(PATH_KEYS)} (Ks_all optional)")
    return arrays


def load_multiview_npz(path: PathLike, *, num_frames: Optional[int] = None,
                       trajectory_file: Optional[PathLike] = None) -> MultiviewInputs:
    """The official multi-view npz (module docstring), on the CPU.

    With ``trajectory_file`` the target path comes from that file (``num_frames`` is then required and the npz's
    ``w2cs_all`` / ``Ks_all`` are not used); otherwise from ``w2cs_all`` and ``Ks_all`` (default: ``K_key[-1]``
    for every target), cut to ``num_frames`` when given.
    """
    path = Path(path)
    if trajectory_file is not None and num_frames is None:
        raise ValueError(f"trajectory file {trajectory_file}: give the number of frames it must hold")
    arrays = _read_npz(path, with_path=trajectory_file is None)
    what = f"multi-view npz {path}"
    key_frames = checked_key_frames(*(arrays[key] for key in KEY_FRAME_KEYS), what=what)
    if trajectory_file is not None:
        return MultiviewInputs(key_frames, target_path_from_file(trajectory_file, num_frames=num_frames))
    w2cs = _real_array(arrays["w2cs_all"], "w2cs_all", what)
    if "Ks_all" in arrays:
        Ks = _real_array(arrays["Ks_all"], "Ks_all", what)
    else:
        Ks = default_target_intrinsics(key_frames.K_N33, len(w2cs) if w2cs.ndim else 0).double().numpy()
    return MultiviewInputs(key_frames, checked_target_path(w2cs, Ks, what=what, num_frames=num_frames))


def load_key_frame_folder(folder: PathLike) -> KeyFrames:
    """Key frames from a folder of images, depth files and ``cameras.json`` (layout in ``multiview_folder``)."""
    arrays = read_key_frame_folder(folder)
    names = ("images", "depth", "masks", "K", "w2c (c2w inverted)")
    return checked_key_frames(*(arrays[key] for key in KEY_FRAME_KEYS), what=str(Path(folder) / CAMERAS_FILE),
                              names=names)


def load_multiview(source: PathLike, *, num_frames: Optional[int] = None,
                   trajectory_file: Optional[PathLike] = None) -> MultiviewInputs:
    """Key frames and target path from an official npz (optionally with a trajectory file as the target path) or
    from a key-frame folder, which needs the trajectory file. ``num_frames`` as in :func:`load_multiview_npz`."""
    source = Path(source)
    if source.is_dir():
        if trajectory_file is None or num_frames is None:
            raise ValueError(f"key-frame folder {source}: give the target path as a trajectory file and the number "
                             "of frames it holds")
        return MultiviewInputs(load_key_frame_folder(source), target_path_from_file(trajectory_file,
                                                                                    num_frames=num_frames))
    if source.suffix.lower() != ".npz":
        raise ValueError(f"multi-view input {source}: expected an .npz in the official layout or a key-frame folder")
    return load_multiview_npz(source, num_frames=num_frames, trajectory_file=trajectory_file)
