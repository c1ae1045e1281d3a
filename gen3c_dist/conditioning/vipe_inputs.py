"""ViPE result folders as source videos (the official ``vipe_utils.load_vipe_data``, spec section 8.1).

Layout of a folder (fixture kind ``vipe_inputs``)::

    rgb/<name>.mp4          the video
    depth/<name>.zip        members 00000.exr, 00001.exr, ...: channel "Z" (z-depth), half or float
    pose/<name>.npz         inds int [M]; data c2w [M, 4, 4] or [M, 16] (inverted to w2c here)
    intrinsics/<name>.npz   inds int [M]; data [M, 4] (fx, fy, cx, cy) or [M, 3, 3], pixels of the rgb size
    mask/<name>.zip         optional, members %05d.png, > 0 = a point to keep

Given the folder, the clip is the sorted-first ``rgb/*.mp4``; given ``rgb/<name>.mp4``, that clip. Poses and
intrinsics are found per frame by ``searchsorted(inds, frame)``; the npz files may hold other arrays besides
``inds`` and ``data`` (ViPE writes some).

:func:`load_vipe_arrays` is the official loader, values and dtypes (float32 throughout):
* frames ``u8 / 255``, bilinear-resized to ``resize_hw`` (align_corners=False, no antialias), centre-cropped to
  ``crop_hw``, then ``x 2 - 1``; depth resized bilinear from its own resolution and cropped; the mask resized
  nearest and cropped;
* K scaled by resize / rgb size per axis, then shifted by the crop offset (float32 arithmetic as NumPy 2 does it);
* ``starting_frame_idx >= len`` is clamped to the last frame, frames are ``range(s, min(s + n, len))``, and a
  short clip is padded by repeating its last frame (and its pose and K);
* ``read_mask=False`` (what ``gen3c_dynamic.py`` uses) ignores ``mask/``: the mask is all ones. With ``True`` the
  official code silently falls back to ones for a missing zip or member.

:func:`check_vipe_source` is the pipeline's check, run on every rank before models load (it decodes no video).
Decisions, where it is stricter than the official loader (none changes a number of a run the official code
accepts without error or silent fallback):
* a start at or beyond the last frame is refused: the official clamp turns the request into a still video of the
  last frame, which no one asks for on purpose. A start inside the video with too few frames left is padded, as
  the official loader does (the last frame freezes);
* ``read_mask=True`` (our ``vipe_read_mask`` option; the official script never reads masks) needs the mask zip
  and a member for every frame used, instead of falling back to ones;
* every EXR used must have channel Z, all of one size; every frame needs a pose and intrinsics; poses must be
  rigid, K positive; where the mask is on, the resized depth must be finite and > 0 (``video_checks``).

Resize rule for a run of H x W (:func:`vipe_resize_hw`): the official resizes to 720 x 1280, the 16:9 frame of
the run's width, and centre-crops to 704 x 1280. We resize to ``(max(H, round(9 W / 16)), W)`` and centre-crop to
H x W: exactly the official at 704 x 1280 (and the same proportions at 352 x 640); a run taller than 16:9 (the
128 x 192 demo) has nothing to crop and is resized straight to H x W. Like the official, the resize does not keep
the source's aspect ratio when the source is not 16:9.

Note that ViPE's ``mask/`` holds instance masks (> 0 where a segmented object is): the official reading keeps only
those pixels' points, so ``vipe_read_mask`` suits footage where the mask marks what to keep.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from gen3c_dist.conditioning.video_checks import check_depth_where_masked, check_video_cameras
from gen3c_dist.conditioning.video_io import mp4_info, open_zip, read_exr_depth, read_mp4_frames, read_png_mask

OFFICIAL_RESIZE_HW, OFFICIAL_CROP_HW = (720, 1280), (704, 1280)


@dataclass(frozen=True)
class VipeClip:
    """The files of one clip of a ViPE folder."""

    name: str
    mp4: str
    depth_zip: str
    pose_npz: str
    intrinsics_npz: str
    mask_zip: Optional[str]  # None when the folder has no mask/<name>.zip


def find_vipe_clip(root_or_mp4: str, clip_index: int = 0) -> VipeClip:
    """The clip's files: the given ``rgb/<name>.mp4``, or the ``clip_index``-th sorted ``rgb/*.mp4`` of a folder."""
    path = os.fspath(root_or_mp4)
    if path.endswith(".mp4"):
        mp4, root = path, os.path.dirname(os.path.dirname(os.path.abspath(path)))
    else:
        rgb_dir = os.path.join(path, "rgb")
        if not os.path.isdir(rgb_dir):
            raise ValueError(f"ViPE folder {path}: has no rgb/ folder")
        clips = sorted(f for f in os.listdir(rgb_dir) if f.endswith(".mp4"))
        if not clips or not 0 <= clip_index < len(clips):
            raise ValueError(f"ViPE folder {path}: rgb/ holds {len(clips)} mp4 files, clip {clip_index} was asked for")
        mp4, root = os.path.join(rgb_dir, clips[clip_index]), path
    name = os.path.splitext(os.path.basename(mp4))[0]
    files = {part: os.path.join(root, part, name + ext) for part, ext in
             (("depth", ".zip"), ("pose", ".npz"), ("intrinsics", ".npz"), ("mask", ".zip"))}
    for part, file in [("rgb", mp4)] + [(p, files[p]) for p in ("depth", "pose", "intrinsics")]:
        if not os.path.isfile(file):
            raise ValueError(f"ViPE folder {root}: clip {name!r} has no {part} file {file}")
    mask_zip = files["mask"] if os.path.isfile(files["mask"]) else None
    return VipeClip(name, mp4, files["depth"], files["pose"], files["intrinsics"], mask_zip)


def vipe_frame_indices(starting_frame_idx: int, num_frames: int, total: int) -> list[int]:
    """The official frame list: the start clamped to the last frame, then padded with the last frame."""
    if starting_frame_idx < 0 or num_frames < 1 or total < 1:
        raise ValueError(f"ViPE frames: need start >= 0, num_frames >= 1 and a non-empty video, got "
                         f"{starting_frame_idx}, {num_frames}, {total}")
    start = min(starting_frame_idx, total - 1)
    indices = list(range(start, min(start + num_frames, total)))
    return indices + [total - 1] * (num_frames - len(indices))


def vipe_resize_hw(height: int, width: int) -> tuple[int, int]:
    """The resize before the centre crop to (height, width): (720, 1280) for the official 704 x 1280."""
    return max(height, (9 * width + 8) // 16), width


def _read_per_frame(path: str, frames: Sequence[int]) -> list[np.ndarray]:
    """``data[searchsorted(inds, f)]`` for each frame, refusing frames absent from ``inds``."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            if "inds" not in npz.files or "data" not in npz.files:
                raise ValueError(f"{path}: must hold arrays 'inds' and 'data', has {list(npz.files)}")
            inds, data = np.asarray(npz["inds"]), np.asarray(npz["data"])
    except (OSError, EOFError) as err:
        raise ValueError(f"{path}: cannot be read as an .npz ({err})") from None
    if inds.ndim != 1 or len(data) != len(inds):
        raise ValueError(f"{path}: 'inds' {list(inds.shape)} and 'data' {list(data.shape)} must have one entry "
                         "per index")
    items = []
    for frame in frames:
        pos = int(np.searchsorted(inds, frame))
        if pos >= len(inds) or int(inds[pos]) != frame:
            raise ValueError(f"{path}: has no entry for frame {frame} (its inds run {inds[:1].tolist()}.."
                             f"{inds[-1:].tolist()})")
        items.append(data[pos])
    return items


def _w2c_from_c2w(path: str, frames: Sequence[int]) -> np.ndarray:
    w2cs = []
    for frame, mat in zip(frames, _read_per_frame(path, frames)):
        mat = mat.reshape(4, 4) if mat.shape == (16,) else mat
        if mat.shape != (4, 4):
            raise ValueError(f"{path}: pose of frame {frame} must be [4, 4] or [16], got {list(mat.shape)}")
        try:
            w2cs.append(np.linalg.inv(mat.astype(np.float32)).astype(np.float32))
        except np.linalg.LinAlgError:
            raise ValueError(f"{path}: c2w of frame {frame} is not invertible") from None
    return np.stack(w2cs)


def _adjusted_intrinsics(path: str, frames: Sequence[int], src_hw: tuple[int, int], resize_hw: tuple[int, int],
                         crop_hw: tuple[int, int]) -> np.ndarray:
    Ks = []
    for frame, item in zip(frames, _read_per_frame(path, frames)):
        if item.shape == (3, 3):
            K = item.astype(np.float32)
        elif item.shape == (4,):
            fx, fy, cx, cy = (float(v) for v in item)
            K = np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=np.float32)
        else:
            raise ValueError(f"{path}: intrinsics of frame {frame} must be [4] (fx, fy, cx, cy) or [3, 3], "
                             f"got {list(item.shape)}")
        sx, sy = resize_hw[1] / float(src_hw[1]), resize_hw[0] / float(src_hw[0])
        K = K.copy()
        # Element-wise float32 times Python float, as the official code does (NumPy 2 keeps float32).
        K[0, 0] *= sx
        K[1, 1] *= sy
        K[0, 2] *= sx
        K[1, 2] *= sy
        K[0, 2] -= max((resize_hw[1] - crop_hw[1]) // 2, 0)
        K[1, 2] -= max((resize_hw[0] - crop_hw[0]) // 2, 0)
        Ks.append(K)
    return np.stack(Ks)


def _read_masks(clip: VipeClip, frames: Sequence[int], src_hw: tuple[int, int], *, read_mask: bool,
                strict: bool) -> np.ndarray:
    """[n, h, w] float32 0/1; ones at the rgb size where no mask is read (official fallback unless ``strict``)."""
    if not read_mask or clip.mask_zip is None:
        if read_mask and strict:
            raise ValueError(f"ViPE clip {clip.name!r}: vipe_read_mask is set but there is no mask/{clip.name}.zip")
        return np.ones((len(frames), *src_hw), dtype=np.float32)
    masks = []
    with open_zip(clip.mask_zip) as archive:
        names = set(archive.namelist())
        for frame in frames:
            member = f"{frame:05d}.png"
            if member in names:
                masks.append(read_png_mask(archive, member))
            elif strict:
                raise ValueError(f"{clip.mask_zip}: has no member {member} for frame {frame}")
            else:
                masks.append(np.ones(src_hw, dtype=np.float32))
    if len({m.shape for m in masks}) > 1:
        sizes = sorted({m.shape for m in masks})
        raise ValueError(f"{clip.mask_zip}: masks of the frames used differ in size ({sizes})")
    return np.stack(masks)


def _resize_crop(x_NCHW: torch.Tensor, resize_hw: tuple[int, int], crop_hw: tuple[int, int], mode: str) -> torch.Tensor:
    kwargs = {"align_corners": False} if mode == "bilinear" else {}
    x_NCHW = F.interpolate(x_NCHW, size=tuple(resize_hw), mode=mode, **kwargs)
    top, left = max((resize_hw[0] - crop_hw[0]) // 2, 0), max((resize_hw[1] - crop_hw[1]) // 2, 0)
    return x_NCHW[:, :, top:top + crop_hw[0], left:left + crop_hw[1]]


def _read_depths(clip: VipeClip, frames: Sequence[int]) -> list[np.ndarray]:
    with open_zip(clip.depth_zip) as archive:
        return [read_exr_depth(archive, f"{frame:05d}.exr") for frame in frames]


def load_vipe_arrays(
    root_or_mp4: str, starting_frame_idx: int, resize_hw: tuple[int, int] = OFFICIAL_RESIZE_HW,
    crop_hw: tuple[int, int] = OFFICIAL_CROP_HW, num_frames: int = 121, read_mask: bool = False, clip_index: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The official ViPE loader: (frames [n,3,ch,cw] in [-1,1], depth [n,1,ch,cw], mask [n,1,ch,cw], w2c [n,4,4],
    K [n,3,3]), all float32; see the module docstring."""
    clip = find_vipe_clip(root_or_mp4, clip_index)
    frames = vipe_frame_indices(starting_frame_idx, num_frames, mp4_info(clip.mp4).num_frames)
    rgb_NHW3 = read_mp4_frames(clip.mp4, frames).astype(np.float32) / 255.0
    src_hw = rgb_NHW3.shape[1:3]
    w2c_N44 = _w2c_from_c2w(clip.pose_npz, frames)
    K_N33 = _adjusted_intrinsics(clip.intrinsics_npz, frames, src_hw, resize_hw, crop_hw)
    depths = _read_depths(clip, frames)
    if len({d.shape for d in depths}) > 1:
        raise ValueError(f"{clip.depth_zip}: depth images of the frames used differ in size")
    masks_NHW = _read_masks(clip, frames, src_hw, read_mask=read_mask, strict=False)
    frames_N3HW = _resize_crop(torch.from_numpy(rgb_NHW3).permute(0, 3, 1, 2).contiguous(), resize_hw, crop_hw,
                               "bilinear")
    depth_N1HW = _resize_crop(torch.from_numpy(np.stack(depths))[:, None].contiguous(), resize_hw, crop_hw, "bilinear")
    mask_N1HW = _resize_crop(torch.from_numpy(masks_NHW)[:, None].contiguous(), resize_hw, crop_hw, "nearest")
    return (frames_N3HW * 2.0 - 1.0, depth_N1HW, mask_N1HW, torch.from_numpy(w2c_N44).contiguous(),
            torch.from_numpy(K_N33).contiguous())


@dataclass(frozen=True)
class VipeCheck:
    clip: VipeClip
    source_frames: int  # frames in the clip's video
    frame_indices: tuple[int, ...]  # the clip frames used, padding included


def check_vipe_source(root_or_mp4: str, *, start_frame: int, num_frames: int, height: int, width: int,
                      read_mask: bool) -> VipeCheck:
    """Refuse a ViPE input the pipeline cannot use, without decoding the video (see the module docstring)."""
    if isinstance(start_frame, bool) or not isinstance(start_frame, int) or start_frame < 0:
        raise ValueError(f"vipe start frame: must be an integer >= 0, got {start_frame!r}")
    clip = find_vipe_clip(root_or_mp4)
    info = mp4_info(clip.mp4)
    if start_frame >= info.num_frames:
        raise ValueError(f"{clip.mp4}: has {info.num_frames} frames (0..{info.num_frames - 1}), so it cannot start "
                         f"at frame {start_frame} (the official loader would silently freeze the last frame)")
    frames = vipe_frame_indices(start_frame, num_frames, info.num_frames)
    unique = sorted(set(frames))
    resize_hw, crop_hw = vipe_resize_hw(height, width), (height, width)
    w2c = _w2c_from_c2w(clip.pose_npz, unique)
    K = _adjusted_intrinsics(clip.intrinsics_npz, unique, (info.height, info.width), resize_hw, crop_hw)
    counted = f"(frames counted from clip frame {unique[0]})"  # unique is the contiguous run of clip frames used
    check_video_cameras(w2c, K, what_w2c=f"{clip.pose_npz} {counted}: the inverted c2w",
                        what_K=f"{clip.intrinsics_npz} {counted}")
    masks = _read_masks(clip, unique, (info.height, info.width), read_mask=read_mask, strict=True)
    depth_hw = None
    with open_zip(clip.depth_zip) as archive:
        for i, frame in enumerate(unique):  # one frame at a time: the check must stay light on every rank
            depth = read_exr_depth(archive, f"{frame:05d}.exr")
            if depth_hw not in (None, depth.shape):
                raise ValueError(f"{clip.depth_zip}: {frame:05d}.exr is {list(depth.shape)}, earlier frames "
                                 f"{list(depth_hw)}")
            depth_hw = depth.shape
            depth_11HW = _resize_crop(torch.from_numpy(depth)[None, None], resize_hw, crop_hw, "bilinear")
            mask_11HW = _resize_crop(torch.from_numpy(masks[i])[None, None], resize_hw, crop_hw, "nearest")
            check_depth_where_masked(depth_11HW[:, 0].numpy(), mask_11HW[:, 0].numpy(),
                                     what=f"{clip.depth_zip}: {frame:05d}.exr", frame_labels=[frame])
    return VipeCheck(clip, info.num_frames, tuple(frames))
