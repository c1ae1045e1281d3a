"""Small source videos on disk for the loader tests: the official directory layout, a .pt and a ViPE folder.

The content is the demo video at a small size (exact depth and rigid cameras), so a folder written unchanged
passes every check; tests then break one thing at a time.
"""

from __future__ import annotations

import functools
import io
import zipfile
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from gen3c_dist.demo_video import render_demo_video, write_lossless_mp4

T, H, W = 5, 24, 32


@functools.lru_cache(maxsize=None)
def _video(num_frames: int, height: int, width: int) -> dict[str, np.ndarray]:
    return render_demo_video(num_frames, height, width)


def small_video(num_frames: int = T, height: int = H, width: int = W) -> dict[str, np.ndarray]:
    """frames uint8 [T,H,W,3], depth float32, mask bool, w2c and intrinsics float32 (fresh copies)."""
    video = {k: v.copy() for k, v in _video(num_frames, height, width).items()}
    video["depth"] = video["depth"].astype(np.float32)
    return video


def small_video_tensors(num_frames: int = T, height: int = H, width: int = W) -> dict[str, torch.Tensor]:
    """:func:`small_video` as Cache4D takes it: frames [T,3,H,W] in [-1, 1], depth and mask [T,1,H,W], w2c, K."""
    v = small_video(num_frames, height, width)
    return {"frames": torch.from_numpy(v["frames"]).permute(0, 3, 1, 2).float() / 127.5 - 1,
            "depth": torch.from_numpy(v["depth"])[:, None], "mask": torch.from_numpy(v["mask"]).float()[:, None],
            "w2c": torch.from_numpy(v["w2c"]), "K": torch.from_numpy(v["intrinsics"])}


def write_directory(folder: Path, video: Optional[dict] = None, **replace: dict) -> Path:
    """rgb.mp4, depth.npz, mask.npz, camera.npz; ``replace={'camera.npz': {...}}`` swaps a file's arrays."""
    video = small_video() if video is None else video
    folder.mkdir(parents=True, exist_ok=True)
    write_lossless_mp4(folder / "rgb.mp4", video["frames"])
    arrays = {"depth.npz": {"depth": video["depth"]}, "mask.npz": {"mask": video["mask"]},
              "camera.npz": {"w2c": video["w2c"], "intrinsics": video["intrinsics"]}}
    arrays.update(replace)
    for name, content in arrays.items():
        np.savez(folder / name, **content)
    return folder


def write_pt(path: Path, video: Optional[dict] = None, items: Optional[list] = None) -> Path:
    video = small_video() if video is None else video
    if items is None:
        items = [torch.from_numpy(video["frames"]).permute(0, 3, 1, 2).float() / 127.5 - 1,
                 torch.from_numpy(video["depth"])[:, None], torch.from_numpy(video["mask"]).float()[:, None],
                 torch.from_numpy(video["w2c"]), torch.from_numpy(video["intrinsics"])]
    torch.save(tuple(items), path)
    return path


def write_exr_zip(path: Path, depths: list[np.ndarray], channel: str = "Z") -> None:
    """Members %05d.exr, one half channel each (``channel``), ZIP compression."""
    import OpenEXR

    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        for i, depth in enumerate(depths):
            member = path.parent / f"_tmp_{i:05d}.exr"
            header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
            OpenEXR.File(header, {channel: depth.astype(np.float16)}).write(str(member))
            archive.write(member, f"{i:05d}.exr")
            member.unlink()


def write_png_zip(path: Path, masks: list[np.ndarray]) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        for i, mask in enumerate(masks):
            buffer = io.BytesIO()
            Image.fromarray((mask > 0).astype(np.uint8) * 255).save(buffer, format="PNG")
            archive.writestr(f"{i:05d}.png", buffer.getvalue())


def write_vipe(root: Path, video: Optional[dict] = None, *, name: str = "clip", masks: bool = False,
               depth_channel: str = "Z", inds: Optional[np.ndarray] = None) -> Path:
    """A ViPE folder: rgb/<name>.mp4, depth/<name>.zip (EXR), pose (c2w) and intrinsics (fx, fy, cx, cy) npz."""
    video = small_video() if video is None else video
    count = len(video["frames"])
    inds = np.arange(count) if inds is None else inds
    (root / "rgb").mkdir(parents=True, exist_ok=True)
    write_lossless_mp4(root / "rgb" / f"{name}.mp4", video["frames"])
    write_exr_zip(root / "depth" / f"{name}.zip", list(video["depth"]), channel=depth_channel)
    (root / "pose").mkdir(exist_ok=True)
    c2w = np.linalg.inv(video["w2c"].astype(np.float64)).astype(np.float32)
    np.savez(root / "pose" / f"{name}.npz", inds=inds, data=c2w[: len(inds)])
    (root / "intrinsics").mkdir(exist_ok=True)
    K = video["intrinsics"]
    fxfycxcy = np.stack([K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2]], axis=1)
    np.savez(root / "intrinsics" / f"{name}.npz", inds=np.arange(count), data=fxfycxcy)
    if masks:
        write_png_zip(root / "mask" / f"{name}.zip", list(video["mask"]))
    return root
