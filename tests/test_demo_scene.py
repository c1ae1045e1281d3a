"""The shipped demo scene matches a fresh render, and its depth is the exact geometry."""

import numpy as np
from PIL import Image

from gen3c_dist.demo_scene import ASSET_DIR, DEPTH_NAME, IMAGE_NAME, SPHERES, render_demo_scene


def test_shipped_assets_match_a_fresh_render():
    image, depth, K = render_demo_scene()
    assert np.array_equal(np.asarray(Image.open(ASSET_DIR / IMAGE_NAME)), image)
    shipped = np.load(ASSET_DIR / DEPTH_NAME)
    assert np.array_equal(shipped["depth"], depth) and np.array_equal(shipped["intrinsics"], K)


def test_depth_is_the_z_of_the_nearest_surface():
    image, depth, K = render_demo_scene(64, 96)
    # The centre pixel of the first sphere's projection lies on the sphere: z = centre_z - radius there.
    (cx, cy, cz), radius, _ = SPHERES[0]
    u, v = K[0, 0] * cx / cz + K[0, 2], K[1, 1] * cy / cz + K[1, 2]
    ray = np.linalg.inv(K.astype(np.float64)) @ np.array([round(u), round(v), 1.0])
    hit_z = depth[round(v), round(u)]
    point = ray * hit_z
    assert abs(np.linalg.norm(point - np.array([cx, cy, cz])) - radius) < 1e-4
    assert depth.min() > 0 and image.dtype == np.uint8 and image.std() > 20
