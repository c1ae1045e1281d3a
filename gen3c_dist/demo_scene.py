"""The demo's input: a procedurally ray-traced scene with its exact z-depth and pixel intrinsics.

Two shaded spheres on a checkered floor in front of a striped wall. Because depth and intrinsics are exact,
the demo needs no depth model, and the 3D-cache renders along the camera path are meaningful even though the
tiny random DiT's frames are not. ``python -m gen3c_dist.demo_scene`` rewrites the shipped files under
``gen3c_dist/assets/``; a test checks that they match a fresh render.

Conventions are GEN3C's: the image's camera at the origin looking down +z (:func:`render_view` places other
cameras, for the demo video), x right, y down, pixel (x, y) on integer coordinates with ray ``K^-1 [x, y, 1]``,
depth is z-depth.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

ASSET_DIR = Path(__file__).resolve().parent / "assets"
IMAGE_NAME = "demo_scene.png"
DEPTH_NAME = "demo_scene_depth.npz"
HEIGHT, WIDTH = 256, 384
# (centre xyz, radius, rgb)
SPHERES = (((-0.45, 0.35, 2.3), 0.45, (0.85, 0.25, 0.2)), ((0.6, 0.5, 3.0), 0.45, (0.2, 0.45, 0.9)))
FLOOR_Y, WALL_Z = 0.95, 4.5
LIGHT_DIR = np.array([-0.4, -0.8, -0.45]) / np.linalg.norm([-0.4, -0.8, -0.45])


def demo_intrinsics(height: int, width: int) -> np.ndarray:
    focal = 0.9 * width
    return np.array([[focal, 0, (width - 1) / 2], [0, focal, (height - 1) / 2], [0, 0, 1]], dtype=np.float64)


def _ray_directions(height: int, width: int, K: np.ndarray) -> np.ndarray:
    ys, xs = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    pixels = np.stack([xs, ys, np.ones_like(xs)], axis=-1).astype(np.float64)  # [H, W, 3]
    return pixels @ np.linalg.inv(K).T  # [H, W, 3], z component 1


def _hit_spheres(
    origin_3: np.ndarray, rays: np.ndarray, spheres=SPHERES
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest sphere hit per ray from ``origin``: ray parameter t (inf if none), unit normal, base colour."""
    t_best = np.full(rays.shape[:2], np.inf)
    normal = np.zeros(rays.shape)
    colour = np.zeros(rays.shape)
    for centre, radius, rgb in spheres:
        c = np.asarray(centre) - origin_3
        b = rays @ c
        a = (rays**2).sum(-1)
        disc = b**2 - a * (c @ c - radius**2)
        t = np.where(disc > 0, (b - np.sqrt(np.maximum(disc, 0))) / a, np.inf)
        closer = (t > 0) & (t < t_best)
        t_best = np.where(closer, t, t_best)
        hit_normal = (rays * t[..., None] - c) / radius
        normal = np.where(closer[..., None], hit_normal, normal)
        colour = np.where(closer[..., None], np.asarray(rgb), colour)
    return t_best, normal, colour


def render_view(
    K: np.ndarray, height: int, width: int, *, cam_to_world: np.ndarray | None = None, spheres=SPHERES
) -> tuple[np.ndarray, np.ndarray]:
    """rgb uint8 [H, W, 3] and z-depth float32 [H, W] of the scene seen by a pinhole camera.

    ``cam_to_world`` [4, 4] (rows of its rotation: the camera's right, down and forward axes in the world; default
    the identity, the single demo image) places the camera; ``spheres`` may move them (the demo video).
    """
    rays_cam = _ray_directions(height, width, K)
    origin = np.zeros(3)
    rays = rays_cam
    if cam_to_world is not None:
        origin = np.asarray(cam_to_world[:3, 3], dtype=np.float64)
        rays = rays_cam @ np.asarray(cam_to_world[:3, :3], dtype=np.float64).T
    t_wall = np.where(rays[..., 2] > 1e-9, (WALL_Z - origin[2]) / np.maximum(rays[..., 2], 1e-9), np.inf)
    t_floor = np.where(rays[..., 1] > 1e-9, (FLOOR_Y - origin[1]) / np.maximum(rays[..., 1], 1e-9), np.inf)
    t_sphere, sphere_normal, sphere_rgb = _hit_spheres(origin, rays, spheres)
    t = np.minimum(np.minimum(t_wall, t_floor), t_sphere)
    points = origin + rays * t[..., None]

    wall_rgb = np.stack([0.55 + 0.25 * (np.sin(points[..., 0] * 6) > 0), 0.6 + 0.2 * np.cos(points[..., 1] * 3), 0.45 + 0.0 * t], -1)
    checker = (np.floor(points[..., 0] * 2.5) + np.floor(points[..., 2] * 2.5)) % 2
    floor_rgb = np.stack([0.35 + 0.5 * checker, 0.35 + 0.45 * checker, 0.3 + 0.3 * checker], -1)
    rgb = np.where((t == t_floor)[..., None], floor_rgb, wall_rgb)
    lambert = np.clip(sphere_normal @ LIGHT_DIR, 0, 1)[..., None]  # LIGHT_DIR points towards the light
    rgb = np.where((t == t_sphere)[..., None], sphere_rgb * (0.25 + 0.75 * lambert), rgb)
    rgb = rgb * (1.0 / (1.0 + 0.08 * points[..., 2]))[..., None]  # depth cue, so the warps read as 3D

    image = np.clip(np.round(rgb * 255), 0, 255).astype(np.uint8)
    return image, (rays_cam[..., 2] * t).astype(np.float32)  # z-depth in the camera


def render_demo_scene(height: int = HEIGHT, width: int = WIDTH, *, w2c: np.ndarray | None = None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Returns (rgb uint8 [H, W, 3], z-depth float32 [H, W], K float32 [3, 3]) seen by camera ``w2c``.

    ``w2c`` (world-to-camera, float64 [4, 4], default the identity: the image demo) must be rigid. Colours
    depend only on the world point (no view-dependent shading), so renders from several cameras are exact
    multi-view data (the multi-view demo's key frames).
    """
    K = demo_intrinsics(height, width)
    cam_to_world = None
    if w2c is not None:
        R, t = np.asarray(w2c, dtype=np.float64)[:3, :3], np.asarray(w2c, dtype=np.float64)[:3, 3]
        cam_to_world = np.eye(4)
        cam_to_world[:3, :3], cam_to_world[:3, 3] = R.T, -R.T @ t
    image, depth = render_view(K, height, width, cam_to_world=cam_to_world)
    return image, depth, K.astype(np.float32)


def write_assets(directory: Path = ASSET_DIR) -> None:
    image, depth, K = render_demo_scene()
    directory.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(directory / IMAGE_NAME)
    np.savez_compressed(directory / DEPTH_NAME, depth=depth, intrinsics=K)


if __name__ == "__main__":
    write_assets()
    print(f"wrote {ASSET_DIR / IMAGE_NAME} and {ASSET_DIR / DEPTH_NAME}")
