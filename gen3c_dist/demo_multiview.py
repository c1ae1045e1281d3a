"""The multi-view demo's input: four exact key views of the demo scene and a 121-frame target path.

The scene is :mod:`gen3c_dist.demo_scene`'s (two spheres on a checkered floor before a striped wall), ray traced
from four cameras on an arc around it, so images, z-depth, masks and cameras are exact and mutually consistent.
The target path sweeps along the same arc from key view 0 to key view 3, passing through every key pose
(frames 0, 40, 80 and 120). It is written in the official ``gen3c_multiview.py`` npz layout (spec section 8.2)
without ``Ks_all``, so every target takes ``K_key_frames[-1]`` (here all K are equal), at 128x192, the image
demo's size. ``python -m gen3c_dist.demo_multiview`` rewrites the shipped file; a test checks it matches a
fresh render.

Cameras are proper look-at poses (world-to-camera, x right, y down, z forward, translation ``-R c``), not the
official trajectory's ``-p`` quirk: this is user input, as a COLMAP export would be.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gen3c_dist.demo_scene import ASSET_DIR, render_demo_scene

MULTIVIEW_DIR = ASSET_DIR / "demo_multiview"
NPZ_NAME = "scene.npz"
HEIGHT, WIDTH = 128, 192
NUM_KEY_VIEWS = 4
NUM_FRAMES = 121
ARC_CENTRE = np.array([0.05, 0.35, 2.7])  # between the two spheres
ARC_RADIUS = 2.7
ARC_DEGREES = (-16.0, 16.0)  # first and last key view, seen from above (0 = the image demo's camera axis)
CAMERA_HEIGHT = -0.05  # world y of the cameras (y points down: slightly above the image demo's camera)


def look_at_w2c(centre_3: np.ndarray, target_3: np.ndarray) -> np.ndarray:
    """A rigid world-to-camera [4, 4] at ``centre`` looking at ``target``, up = -y (y down), t = -R c."""
    forward = (target_3 - centre_3) / np.linalg.norm(target_3 - centre_3)
    right = np.cross([0.0, 1.0, 0.0], forward)
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    R = np.stack([right, down, forward])
    w2c = np.eye(4)
    w2c[:3, :3], w2c[:3, 3] = R, -R @ centre_3
    return w2c


def arc_w2cs(degrees_N: np.ndarray) -> np.ndarray:
    """Cameras [N, 4, 4] on the arc at the given angles, each looking at the arc centre."""
    w2cs = []
    for angle in np.radians(degrees_N):
        centre = ARC_CENTRE + ARC_RADIUS * np.array([np.sin(angle), 0.0, -np.cos(angle)])
        centre[1] = CAMERA_HEIGHT
        w2cs.append(look_at_w2c(centre, ARC_CENTRE))
    return np.stack(w2cs)


def key_view_degrees() -> np.ndarray:
    return np.linspace(*ARC_DEGREES, NUM_KEY_VIEWS)


def target_degrees(num_frames: int = NUM_FRAMES) -> np.ndarray:
    """Target angles: the arc from the first to the last key view; key view i is frame i (F-1)/(N-1)."""
    return np.linspace(*ARC_DEGREES, num_frames)


def multiview_scene(num_frames: int = NUM_FRAMES, height: int = HEIGHT, width: int = WIDTH
                    ) -> dict[str, np.ndarray]:
    """The arrays of the official npz layout, float32: key views and the target path ``w2cs_all``."""
    key_w2cs = arc_w2cs(key_view_degrees())
    images, depths, Ks = [], [], []
    for w2c in key_w2cs:
        rgb, depth, K = render_demo_scene(height, width, w2c=w2c)
        images.append(rgb.transpose(2, 0, 1).astype(np.float32) / 127.5 - 1)
        depths.append(depth[None])
        Ks.append(K)
    depth_N1HW = np.stack(depths)
    return {
        "images_key_frames": np.stack(images).astype(np.float32),
        "depth_key_frames": depth_N1HW.astype(np.float32),
        "mask_key_frames": np.ones_like(depth_N1HW, dtype=np.float32),  # every pixel is exact geometry
        "K_key_frames": np.stack(Ks).astype(np.float32),
        "w2cs_key_frames": key_w2cs.astype(np.float32),
        "w2cs_all": arc_w2cs(target_degrees(num_frames)).astype(np.float32),
    }


def write_assets(directory: Path = MULTIVIEW_DIR) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / NPZ_NAME
    np.savez_compressed(path, **multiview_scene())
    return path


if __name__ == "__main__":
    print(f"wrote {write_assets()}")
