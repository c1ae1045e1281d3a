"""Renders at poses where points land on integer pixels: the source pose (frame 0 of every trajectory), a
``no_rotation`` left move (rows stay on integer y), and the integer-landing weight of the splat itself.

The fixtures avoid these poses (KINDS_geometry.md, "Why some configurations are absent"); the op order that
makes them match the official code is documented in gen3c_dist/geometry/pinhole.py.
"""

from __future__ import annotations

import pytest
import torch

from gen3c_dist.geometry.cache3d import Cache3D
from gen3c_dist.geometry.camera import generate_trajectory
from gen3c_dist.geometry.pinhole import apply_transform, pixel_rays, project_to_image, unit_pixel_rays
from gen3c_dist.geometry.warp import splat_bilinear, unproject_points

H, W = 24, 40
# At the source pose a neighbour lands a few ulps of its coordinate off its integer (ulp(40) = 3.8e-6), so it
# leaks about that much weight, times the soft z-buffer ratio of two nearby points of a smooth surface (~1),
# times a colour difference <= 2: ~2e-5 measured. A point rendered on the wrong pixel would be off by O(1).
SOURCE_ATOL = 1e-4


def _K() -> torch.Tensor:
    return torch.tensor([[31.0, 0.0, W / 2 - 0.37], [0.0, 29.0, H / 2 + 0.21], [0.0, 0.0, 1.0]])


def _smooth_scene() -> tuple[torch.Tensor, torch.Tensor]:
    """Image [1, 3, H, W] in [-1, 1] with independent random pixels, a smooth slanted depth [1, 1, H, W]."""
    image = torch.rand(1, 3, H, W, generator=torch.Generator().manual_seed(3)) * 2 - 1
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    return image, (1.7 + 0.004 * xs + 0.003 * ys + 0.0001 * xs * ys)[None, None]


def _start(kind: str) -> torch.Tensor:
    if kind == "identity":
        return torch.eye(4)
    start = torch.eye(4)
    start[:3, :3] = torch.linalg.matrix_exp(torch.tensor([[0.0, 0.03, -0.02], [-0.03, 0.0, 0.05], [0.02, -0.05, 0.0]]))
    start[:3, 3] = torch.tensor([0.07, -0.04, 0.11])
    return start


@pytest.mark.parametrize("start", ["identity", "generic"])
@pytest.mark.parametrize("filter_points_threshold", [1.0, 0.05])
def test_frame0_render_reproduces_source_image(start: str, filter_points_threshold: float) -> None:
    image, depth = _smooth_scene()
    if filter_points_threshold < 1.0:
        depth[..., 8:13, 14:22] = 0.9  # a nearer box: its edges are filtered out, leaving holes
    cache = Cache3D(image, depth, _start(start)[None], _K()[None], generator=torch.Generator().manual_seed(0),
                    filter_points_threshold=filter_points_threshold)
    w2cs, Ks = generate_trajectory("left", camera_rotation="center_facing", num_frames=9, movement_distance=0.3,
                                   center_depth=1.0, initial_w2c_44=_start(start), initial_K_33=_K())
    assert torch.equal(w2cs[0], _start(start))  # frame 0 is the source camera itself
    images, masks = cache.render(w2cs[None, :2], Ks[None, :2])  # frame 0 paired with frame 1, as rendered
    render_3HW, mask_HW = images[0, 0, 0], masks[0, 0, 0, 0].bool()
    own_point_HW = torch.ones(H, W, dtype=torch.bool) if cache.masks is None else cache.masks[0, 0, 0]
    if filter_points_threshold < 1.0:
        assert 40 <= int((~own_point_HW).sum()) < H * W // 2  # the filter really made holes
    # Every pixel whose own point survives is rendered from that point, and only from points like it.
    assert bool(mask_HW[own_point_HW].all())
    assert (render_3HW - image[0])[:, own_point_HW].abs().max() <= SOURCE_ATOL
    if filter_points_threshold >= 1.0:  # no holes: the mask is everything, the render is the source
        assert bool(mask_HW.all()) and (render_3HW - image[0]).abs().max() <= SOURCE_ATOL


def test_no_rotation_left_move_shifts_rows_by_the_same_fraction() -> None:
    # A fronto-parallel plane at depth Z seen from a camera moved left by t (R = I): every point moves right by
    # s = fx t / Z pixels and keeps its integer row, so each target pixel is the 1-D linear blend of two
    # source pixels of its own row, and the columns left of floor(s) stay empty.
    image, _ = _smooth_scene()
    plane_Z = 2.0
    depth = torch.full((1, 1, H, W), plane_Z)
    cache = Cache3D(image, depth, torch.eye(4)[None], _K()[None], generator=torch.Generator().manual_seed(0))
    w2cs, Ks = generate_trajectory("left", camera_rotation="no_rotation", num_frames=9, movement_distance=0.3,
                                   center_depth=1.0, initial_w2c_44=torch.eye(4), initial_K_33=_K())
    assert torch.equal(w2cs[1, :3, :3], torch.eye(3)) and float(w2cs[1, 0, 3]) > 0
    images, masks = cache.render(w2cs[None, :2], Ks[None, :2])
    shift = float(_K()[0, 0] * w2cs[1, 0, 3] / plane_Z)
    whole, frac = int(shift), shift - int(shift)
    assert 0.1 < frac < 0.9  # a genuine fractional shift
    render_3HW, mask_HW = images[0, 1, 0], masks[0, 1, 0, 0].bool()
    assert bool((~mask_HW[:, :whole]).all()) and bool(mask_HW[:, whole:].all())
    expected_3HW = torch.full_like(render_3HW, -1.0)
    expected_3HW[:, :, whole] = image[0, :, :, 0]
    own_3HW, left_3HW = image[0, :, :, 1 : W - whole], image[0, :, :, : W - whole - 1]
    expected_3HW[:, :, whole + 1 :] = (1 - frac) * own_3HW + frac * left_3HW
    assert (render_3HW - expected_3HW).abs().max() <= 1e-4


def test_integer_landing_splat_weights_on_2x2() -> None:
    # Source points on a 2x2 target with z-weight 1; every expected figure is hand-computed and exact (dyadic):
    #   A at (x, y) = (1, 0), both coordinates integer: floor == ceil, all four corner weights are 1, so the
    #     pixel (row 0, col 1) gets weight 4 and its neighbours nothing from A;
    #   B at (0.25, 1): y integer, so both row weights are 1: (row 1, col 0) gets 2 * 0.75, (row 1, col 1) 2 * 0.25;
    #   C at (1 - 2^-22, 0), one hair left of A's spot: col 0 now gets 2 * 2^-22 and col 1 2 * (1 - 2^-22);
    #   D is never splatted.
    values_1122 = torch.tensor([[[[10.0, 20.0], [32.0, 40.0]]]])  # A, B / C, D in source order
    pos_1222 = torch.tensor([[[[1.0, 0.25], [1.0 - 2.0**-22, 0.6]], [[0.0, 1.0], [0.0, 0.6]]]])
    ones_1122 = torch.ones(1, 1, 2, 2)

    sums, wsum = splat_bilinear(values_1122, pos_1222, torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]]), ones_1122)
    assert torch.equal(wsum[0, 0], torch.tensor([[0.0, 4.0], [1.5, 0.5]]))
    assert torch.equal(sums[0, 0], torch.tensor([[0.0, 10.0 * 4], [20.0 * 1.5, 20.0 * 0.5]]))

    sums, wsum = splat_bilinear(values_1122, pos_1222, torch.tensor([[[[0.0, 0.0], [1.0, 0.0]]]]), ones_1122)
    assert torch.equal(wsum[0, 0], torch.tensor([[2.0**-21, 2.0 - 2.0**-21], [0.0, 0.0]]))
    assert torch.equal(sums[0, 0], torch.tensor([[32.0 * 2.0**-21, 32.0 * (2.0 - 2.0**-21)], [0.0, 0.0]]))


def test_camera_products_are_per_point_column_vectors() -> None:
    # The official order multiplies each point as a column vector; the results must not depend on how many
    # items share a call (a row-vector matmul did: a batch of 1 went to another kernel).
    K_B33 = torch.stack([_K(), _K() * torch.tensor([[1.1], [0.9], [1.0]])])
    depth = torch.rand(2, 1, H, W, generator=torch.Generator().manual_seed(5)) + 1.5
    w2c_B44 = torch.stack([_start("generic"), torch.eye(4)])
    points_BHW3 = unproject_points(depth, w2c_B44, K_B33)
    cam_BHW3 = apply_transform(points_BHW3, w2c_B44.flip(0))
    proj_BHW3 = project_to_image(cam_BHW3, K_B33)
    for b in range(2):
        one = slice(b, b + 1)
        alone_BHW3 = project_to_image(apply_transform(points_BHW3[one], w2c_B44.flip(0)[one]), K_B33[one])
        assert torch.equal(alone_BHW3, proj_BHW3[one])
        assert torch.equal(unproject_points(depth[one], w2c_B44[one], K_B33[one]), points_BHW3[one])
    x, y = 7, 5
    expected_ray = torch.linalg.inv(K_B33[1]) @ torch.tensor([float(x), float(y), 1.0])
    assert torch.allclose(pixel_rays(K_B33, H, W)[1, y, x], expected_ray, rtol=1e-6, atol=0)
    assert torch.allclose(unit_pixel_rays(K_B33[1], H, W)[y, x], expected_ray / expected_ray.norm(), rtol=1e-6, atol=0)
    homo = torch.cat([points_BHW3[0, y, x], torch.ones(1)])
    expected_proj = K_B33[0] @ (w2c_B44[1] @ homo)[:3]
    assert torch.allclose(proj_BHW3[0, y, x], expected_proj, rtol=1e-6, atol=0)
