"""Source videos for video-to-video generation (the official ``gen3c_dynamic.py``, spec section 8.1).

Three formats (``VideoSourceSpec.format``; ``auto`` tells them apart by their files):
* ``directory``: ``rgb.mp4``, ``depth.npz`` holding exactly ``depth`` [T, H, W], ``mask.npz`` holding exactly
  ``mask`` [T, H, W] (bool or 0/1), ``camera.npz`` holding exactly ``w2c`` [T, 4, 4] and ``intrinsics``
  [T, 3, 3] (pixels);
* ``pt``: a ``.pt`` with a tuple or list of 5 tensors (image [T, 3, H, W] in [-1, 1], depth [T, 1, H, W],
  mask [T, 1, H, W], w2c, K), loaded with ``weights_only=True`` (no pickle);
* ``vipe``: a ViPE result folder, or ``rgb/<name>.mp4`` inside one (:mod:`gen3c_dist.conditioning.vipe_inputs`).

Two layers:
* :func:`load_dynamic_inputs` is the official ``load_data_auto_detect``, values, dtypes and container as it
  returns them (fixture kind ``dynamic_inputs``): image ``u8 / 127.5 - 1`` float32, depth and mask cast to
  float32 with a channel dim, w2c and K exactly as stored (a float64 ``camera.npz`` stays float64);
* the pipeline's entry: :func:`check_video_source` (every rank, before models load: reads headers and the npz
  arrays, never decodes the video) and :func:`load_video_source` (the lead) turn a :class:`VideoSourceSpec`
  into a :class:`SourceVideo`, float32 throughout, via :func:`source_video_from_arrays`.

Decisions (each problem raises one ValueError naming the file, key or frame):
* The output frames are ``num_frames`` source frames from ``start_frame``. A directory or ``.pt`` must hold all
  of them: the official script needs exactly ``num_video_frames`` frames (other counts crash it), we also take a
  window of a longer video, and refuse one too short (we do not invent frames). A ViPE clip is padded by
  repeating its last frame, as the official loader does, but a start beyond its end is refused (see
  ``vipe_inputs``).
* A directory or ``.pt`` is not resized (as in the official code), so it must already be the run's H x W
  (704 x 1280 for the released model); a ViPE clip of any size is resized and cropped to it.
* Frames, depth, mask and cameras must have one entry per frame each; ``.npz`` files must hold exactly their
  keys (an extra key is usually a misnamed one) and a ``.pt`` exactly 5 tensors.
* Masks are 0/1; depth must be finite and > 0 where the mask is on; masked-off depth is kept as given
  (:mod:`gen3c_dist.conditioning.video_checks`). A ``.pt`` image must lie in [-1, 1].
* Cameras must be rigid and invertible with positive focal lengths (:mod:`gen3c_dist.geometry.pose_checks`).
  Any float dtype is accepted: :class:`SourceVideo` holds float32 (the official Cache4D fails on a float64
  ``camera.npz`` with a dtype mismatch; the fixture values are float32-representable, so the cast is exact).
* ``vipe_read_mask`` (default False, the official behaviour) applies to ViPE folders only.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from gen3c_dist.conditioning import vipe_inputs
from gen3c_dist.conditioning.video_checks import (check_depth_where_masked, check_lengths, check_mask_values,
                                                  check_real_array, check_resolution, check_video_cameras)
from gen3c_dist.conditioning.video_io import mp4_info, read_mp4_frames, read_npz

FORMATS = ("auto", "directory", "pt", "vipe")
DIRECTORY_FILES = {"depth.npz": ("depth",), "mask.npz": ("mask",), "camera.npz": ("w2c", "intrinsics")}
PT_ITEMS = ("image", "depth", "mask", "w2c", "intrinsics")
_NOT_RESIZED = "directory and .pt sources are not resized (give them at the run's size, or use a ViPE folder)"

PathLike = Union[str, os.PathLike]


@dataclass
class SourceVideo:
    """The video a run re-renders: everything float32, one entry per output frame (T = the run's num_frames)."""

    frames_T3HW: torch.Tensor  # [-1, 1]
    depth_T1HW: torch.Tensor  # z-depth
    mask_T1HW: torch.Tensor  # 0/1: the pixels whose points enter the cache
    w2c_T44: torch.Tensor
    K_T33: torch.Tensor  # pixels

    @property
    def num_frames(self) -> int:
        return self.frames_T3HW.shape[0]

    @property
    def height(self) -> int:
        return self.frames_T3HW.shape[2]

    @property
    def width(self) -> int:
        return self.frames_T3HW.shape[3]

    def to(self, device: Union[torch.device, str]) -> "SourceVideo":
        return SourceVideo(*(getattr(self, f.name).to(device) for f in dataclasses.fields(self)))


@dataclass(frozen=True)
class VideoSourceSpec:
    """What to read: the config's video input (the runner maps its keys onto these fields)."""

    path: str
    height: int
    width: int
    num_frames: int
    format: str = "auto"  # one of FORMATS
    start_frame: int = 0
    vipe_read_mask: bool = False


@dataclass(frozen=True)
class VideoSourceInfo:
    """What :func:`check_video_source` found."""

    format: str  # resolved: directory, pt or vipe
    path: str  # the file or folder read
    source_frames: int  # frames the source holds
    frame_indices: tuple[int, ...]  # the source frames used, in output order


def detect_format(path: PathLike) -> str:
    """``pt`` for a .pt file, ``vipe`` for a ViPE folder or an mp4 in its ``rgb/``, ``directory`` for rgb.mp4 + npz."""
    p = Path(path)
    if p.is_file() and p.suffix == ".pt":
        return "pt"
    if p.is_file() and p.suffix == ".mp4" and p.parent.name == "rgb":
        return "vipe"
    if p.is_dir() and (p / "rgb.mp4").is_file():
        return "directory"
    if p.is_dir() and (p / "rgb").is_dir():
        return "vipe"
    raise ValueError(f"video source {path}: not a .pt file, a folder with rgb.mp4 (directory format), or a ViPE "
                     "folder with rgb/ (or an mp4 inside its rgb/)")


def _as_numpy(array: Union[np.ndarray, torch.Tensor]) -> np.ndarray:
    return array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)


def _read_directory_arrays(folder: Path) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for name, keys in DIRECTORY_FILES.items():
        arrays.update(read_npz(str(folder / name), keys))
    return arrays


def _read_pt(path: Path) -> Union[tuple, list]:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises pickle, zip and runtime errors alike for a bad file
        raise ValueError(f"{path}: cannot be loaded with torch.load(weights_only=True) ({err})") from None
    if not isinstance(data, (tuple, list)) or len(data) != len(PT_ITEMS):
        size = len(data) if isinstance(data, (tuple, list, dict)) else "not a sequence"
        raise ValueError(f"{path}: must hold a tuple or list of {len(PT_ITEMS)} tensors {list(PT_ITEMS)}, "
                         f"got {type(data).__name__} ({size})")
    for name, item in zip(PT_ITEMS, data):
        if not isinstance(item, torch.Tensor):
            raise ValueError(f"{path}: item {name!r} must be a tensor, got {type(item).__name__}")
    return data


def load_dynamic_inputs(path: PathLike) -> Union[tuple, list]:
    """The official ``load_data_auto_detect``: (image, depth, mask, w2c, intrinsics) as it returns them.

    A ``.pt`` comes back as saved (same container); a directory as a tuple. No validation beyond readability.
    """
    path = Path(path)
    if path.is_file() and path.suffix == ".pt":
        return _read_pt(path)
    if not path.is_dir():
        raise ValueError(f"video source {path}: neither a .pt file nor a directory")
    frames_THW3 = read_mp4_frames(str(path / "rgb.mp4"))
    arrays = _read_directory_arrays(path)
    image = torch.from_numpy(frames_THW3).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    depth = torch.from_numpy(arrays["depth"].astype(np.float32)).unsqueeze(1)
    mask = torch.from_numpy(arrays["mask"].astype(np.float32)).unsqueeze(1)
    return image, depth, mask, torch.from_numpy(arrays["w2c"]), torch.from_numpy(arrays["intrinsics"])


def _validate_arrays(names: dict[str, str], frame_count: int, frame_hw: tuple[int, int], depth_THW: np.ndarray,
                     mask_THW: np.ndarray, w2c: np.ndarray, K: np.ndarray, spec: VideoSourceSpec) -> None:
    """Every check of a directory or .pt source; ``names`` label each input in messages."""
    check_real_array(depth_THW, what=names["depth"], shape=(None, None, None))
    check_real_array(mask_THW, what=names["mask"], shape=(None, None, None))
    check_real_array(w2c, what=names["w2c"], shape=(None, 4, 4))
    check_real_array(K, what=names["intrinsics"], shape=(None, 3, 3))
    check_lengths({names["image"]: frame_count, names["depth"]: len(depth_THW), names["mask"]: len(mask_THW),
                   names["w2c"]: len(w2c), names["intrinsics"]: len(K)})
    check_resolution({names["image"]: frame_hw, names["depth"]: depth_THW.shape[1:], names["mask"]: mask_THW.shape[1:]},
                     spec.height, spec.width, why=_NOT_RESIZED)
    if spec.start_frame + spec.num_frames > frame_count:
        raise ValueError(f"{names['image']}: has {frame_count} frames, but {spec.num_frames} frames from frame "
                         f"{spec.start_frame} were asked for (a directory or .pt source is not padded)")
    check_mask_values(mask_THW, what=names["mask"])
    check_depth_where_masked(depth_THW, mask_THW, what=names["depth"])
    check_video_cameras(w2c, K, what_w2c=names["w2c"], what_K=names["intrinsics"])


def _directory_names(folder: Path) -> dict[str, str]:
    return {"image": str(folder / "rgb.mp4"), "depth": f"{folder / 'depth.npz'} 'depth'",
            "mask": f"{folder / 'mask.npz'} 'mask'", "w2c": f"{folder / 'camera.npz'} 'w2c'",
            "intrinsics": f"{folder / 'camera.npz'} 'intrinsics'"}


def _pt_arrays(path: Path, data: Sequence[torch.Tensor]) -> tuple[dict[str, str], dict[str, np.ndarray]]:
    """Item names and the items as numpy, image and channel dims checked (depth and mask squeezed to [T, H, W])."""
    names = {item: f"{path} item {i} ({item})" for i, item in enumerate(PT_ITEMS)}
    arrays = {item: _as_numpy(tensor) for item, tensor in zip(PT_ITEMS, data)}
    check_real_array(arrays["image"], what=names["image"], shape=(None, 3, None, None))
    for item in ("depth", "mask"):
        check_real_array(arrays[item], what=names[item], shape=(None, 1, None, None))
        arrays[item] = arrays[item][:, 0]
    image = arrays["image"]
    if image.size and not (np.isfinite(image).all() and image.min() >= -1 and image.max() <= 1):
        raise ValueError(f"{names['image']}: values must lie in [-1, 1], got [{image.min()}, {image.max()}]")
    return names, arrays


def _resolve(spec: VideoSourceSpec) -> str:
    if spec.format not in FORMATS:
        raise ValueError(f"video format: {spec.format!r} is not one of {', '.join(FORMATS)}")
    for name in ("height", "width", "num_frames"):
        value = getattr(spec, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"video {name}: must be a positive integer, got {value!r}")
    if isinstance(spec.start_frame, bool) or not isinstance(spec.start_frame, int) or spec.start_frame < 0:
        raise ValueError(f"video start frame: must be an integer >= 0, got {spec.start_frame!r}")
    fmt = detect_format(spec.path) if spec.format == "auto" else spec.format
    if spec.vipe_read_mask and fmt != "vipe":
        raise ValueError(f"vipe_read_mask: applies to ViPE folders only, but {spec.path} is a {fmt} source "
                         "(its mask is always read)")
    if fmt == "directory" and not Path(spec.path).is_dir():
        raise ValueError(f"video source {spec.path}: the directory format needs a folder")
    if fmt == "pt" and not Path(spec.path).is_file():
        raise ValueError(f"video source {spec.path}: the .pt format needs a file")
    return fmt


def _window(spec: VideoSourceSpec) -> tuple[int, ...]:
    return tuple(range(spec.start_frame, spec.start_frame + spec.num_frames))


def _check_loaded(spec: VideoSourceSpec, fmt: str, path: Path, loaded: Sequence[torch.Tensor]) -> VideoSourceInfo:
    """Every check of a directory or .pt source on what :func:`load_dynamic_inputs` returned."""
    if fmt == "pt":
        names, arrays = _pt_arrays(path, loaded)
    else:
        names = _directory_names(path)
        arrays = {"image": _as_numpy(loaded[0]), "depth": _as_numpy(loaded[1])[:, 0],
                  "mask": _as_numpy(loaded[2])[:, 0], "w2c": _as_numpy(loaded[3]), "intrinsics": _as_numpy(loaded[4])}
    count, frame_hw = len(arrays["image"]), arrays["image"].shape[2:]
    _validate_arrays(names, count, frame_hw, arrays["depth"], arrays["mask"], arrays["w2c"], arrays["intrinsics"],
                     spec)
    return VideoSourceInfo(fmt, str(path), count, _window(spec))


def check_video_source(spec: VideoSourceSpec) -> VideoSourceInfo:
    """Refuse a source the run cannot use, before any model loads; cheap enough for every rank.

    Reads the video's header (frame count and size, not its frames) and the arrays (npz, .pt, ViPE npz, EXR and
    PNG); applies every check of the module docstring.
    """
    fmt = _resolve(spec)
    path = Path(spec.path)
    if fmt == "vipe":
        found = vipe_inputs.check_vipe_source(spec.path, start_frame=spec.start_frame, num_frames=spec.num_frames,
                                              height=spec.height, width=spec.width, read_mask=spec.vipe_read_mask)
        return VideoSourceInfo(fmt, found.clip.mp4, found.source_frames, found.frame_indices)
    if fmt == "pt":
        return _check_loaded(spec, fmt, path, _read_pt(path))
    names, arrays = _directory_names(path), _read_directory_arrays(path)
    info = mp4_info(names["image"])
    _validate_arrays(names, info.num_frames, (info.height, info.width), arrays["depth"], arrays["mask"],
                     arrays["w2c"], arrays["intrinsics"], spec)
    return VideoSourceInfo(fmt, str(path), info.num_frames, _window(spec))


def source_video_from_arrays(image: torch.Tensor, depth: torch.Tensor, mask: torch.Tensor, w2c: torch.Tensor,
                             K: torch.Tensor, *, frame_indices: Optional[Sequence[int]] = None) -> SourceVideo:
    """The float32 :class:`SourceVideo` of loaded arrays (official shapes: [T,3,H,W], [T,1,H,W] x 2, [T,4,4],
    [T,3,3]), keeping ``frame_indices`` (default all). Cameras of any float dtype are cast to float32 here."""
    index = slice(None) if frame_indices is None else torch.as_tensor(list(frame_indices), dtype=torch.long)
    arrays = (image, depth, mask, w2c, K)
    return SourceVideo(*(torch.as_tensor(x)[index].to(torch.float32).contiguous() for x in arrays))


def load_video_source(spec: VideoSourceSpec) -> SourceVideo:
    """The checked, float32 :class:`SourceVideo` of ``spec`` (decodes the video; the lead rank calls this).

    A directory or .pt is read once and checked on what was read (the decoded frame count, not the header's).
    """
    fmt = _resolve(spec)
    if fmt == "vipe":
        vipe_inputs.check_vipe_source(spec.path, start_frame=spec.start_frame, num_frames=spec.num_frames,
                                      height=spec.height, width=spec.width, read_mask=spec.vipe_read_mask)
        arrays = vipe_inputs.load_vipe_arrays(
            spec.path, spec.start_frame, resize_hw=vipe_inputs.vipe_resize_hw(spec.height, spec.width),
            crop_hw=(spec.height, spec.width), num_frames=spec.num_frames, read_mask=spec.vipe_read_mask,
        )
        return source_video_from_arrays(*arrays)
    path = Path(spec.path)
    loaded = load_dynamic_inputs(path)
    info = _check_loaded(spec, fmt, path, loaded)
    return source_video_from_arrays(*loaded, frame_indices=info.frame_indices)
