"""The video demo's input: the demo scene filmed by a moving camera, with exact depth, mask and cameras.

The scene of :mod:`gen3c_dist.demo_scene` (two spheres on a checkered floor before a striped wall), 121 frames at
128 x 192 (the image demo's run size). The camera pans right while it dollies in, always looking at the middle of
the scene; the red sphere rolls sideways and the blue one hops, so the video is dynamic, which is what the 4D cache
is for. Frames 40-79 have a depth dropout: a rectangle whose depth is 0 and whose mask is off, as a sensor or a
depth model leaves them (masked-off depth is never checked, see ``conditioning/video_checks.py``).

Written in the official ``gen3c_dynamic.py`` directory layout under ``gen3c_dist/assets/demo_video/``:
``rgb.mp4`` (H.264 RGB lossless: libx264rgb, qp 0, so it decodes to exactly the rendered frames),
``depth.npz['depth']`` float16 [T, H, W] (the official loader accepts float16; it keeps the files small),
``mask.npz['mask']`` bool [T, H, W], ``camera.npz`` with ``w2c`` [T, 4, 4] and ``intrinsics`` [T, 3, 3]
(pixels), float32. ``python -m gen3c_dist.demo_video`` rewrites them; a test checks that they load back as a fresh
render.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from gen3c_dist.demo_scene import ASSET_DIR, SPHERES, demo_intrinsics, render_view

VIDEO_DIR = ASSET_DIR / "demo_video"
NUM_FRAMES, HEIGHT, WIDTH, FPS = 121, 128, 192, 24
LOOK_AT = np.array([0.05, 0.35, 2.8])
DROPOUT_FRAMES = range(40, 80)
DROPOUT_SIZE = (14, 20)  # rows, columns


def camera_to_world(frame: int, num_frames: int = NUM_FRAMES) -> np.ndarray:
    """c2w [4, 4] float64 of a frame: the camera pans from x = -0.25 to 0.25 and dollies 0.3 forward."""
    s = frame / (num_frames - 1)
    centre = np.array([-0.25 + 0.5 * s, -0.05 * math.sin(math.pi * s), 0.3 * s])
    forward = (LOOK_AT - centre) / np.linalg.norm(LOOK_AT - centre)
    right = np.cross([0.0, 1.0, 0.0], forward)  # y points down, so right = down x forward
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    c2w = np.eye(4)
    c2w[:3, :3] = np.stack([right, down, forward], axis=1)
    c2w[:3, 3] = centre
    return c2w


def spheres_at(frame: int, num_frames: int = NUM_FRAMES):
    """The demo spheres at a frame: the first rolls along x, the second hops above the floor."""
    s = frame / (num_frames - 1)
    (c0, r0, rgb0), (c1, r1, rgb1) = SPHERES
    rolled = (c0[0] + 0.25 * math.sin(2 * math.pi * s), c0[1], c0[2])
    hopped = (c1[0], c1[1] - 0.2 * abs(math.sin(2 * math.pi * s)), c1[2])
    return ((rolled, r0, rgb0), (hopped, r1, rgb1))


def dropout(frame: int, height: int, width: int) -> tuple[slice, slice] | None:
    """The rows and columns of a frame's depth dropout, which drifts right; None outside DROPOUT_FRAMES."""
    if frame not in DROPOUT_FRAMES:
        return None
    top = height // 3
    left = width // 8 + (frame - DROPOUT_FRAMES.start) * (width // 2) // len(DROPOUT_FRAMES)
    return slice(top, top + DROPOUT_SIZE[0]), slice(left, left + DROPOUT_SIZE[1])


def render_demo_video(num_frames: int = NUM_FRAMES, height: int = HEIGHT, width: int = WIDTH
                      ) -> dict[str, np.ndarray]:
    """frames uint8 [T, H, W, 3], depth float16 [T, H, W], mask bool [T, H, W], w2c and intrinsics float32."""
    K = demo_intrinsics(height, width)
    frames, depths, masks, w2cs = [], [], [], []
    for frame in range(num_frames):
        c2w = camera_to_world(frame, num_frames)
        image, depth = render_view(K, height, width, cam_to_world=c2w, spheres=spheres_at(frame, num_frames))
        mask = np.ones((height, width), dtype=bool)
        hole = dropout(frame, height, width)
        if hole is not None:
            mask[hole] = False
            depth[hole] = 0.0
        frames.append(image)
        depths.append(depth.astype(np.float16))
        masks.append(mask)
        w2cs.append(np.linalg.inv(c2w))
    return {"frames": np.stack(frames), "depth": np.stack(depths), "mask": np.stack(masks),
            "w2c": np.stack(w2cs).astype(np.float32),
            "intrinsics": np.repeat(K.astype(np.float32)[None], num_frames, axis=0)}


def write_lossless_mp4(path: Path, frames_THW3: np.ndarray, fps: int = FPS) -> None:
    """H.264 RGB lossless (libx264rgb, qp 0) through imageio-ffmpeg: decodes to exactly ``frames``."""
    import imageio_ffmpeg

    height, width = frames_THW3.shape[1:3]
    writer = imageio_ffmpeg.write_frames(
        str(path), (width, height), pix_fmt_in="rgb24", pix_fmt_out="rgb24", fps=fps, codec="libx264rgb",
        quality=None, macro_block_size=1, output_params=["-qp", "0", "-preset", "veryslow"],
    )
    writer.send(None)  # start the encoder
    for frame in frames_THW3:
        writer.send(np.ascontiguousarray(frame))
    writer.close()


def write_assets(directory: Path = VIDEO_DIR) -> None:
    video = render_demo_video()
    directory.mkdir(parents=True, exist_ok=True)
    write_lossless_mp4(directory / "rgb.mp4", video["frames"])
    np.savez_compressed(directory / "depth.npz", depth=video["depth"])
    np.savez_compressed(directory / "mask.npz", mask=video["mask"])
    np.savez_compressed(directory / "camera.npz", w2c=video["w2c"], intrinsics=video["intrinsics"])


if __name__ == "__main__":
    write_assets()
    print(f"wrote {VIDEO_DIR}")
