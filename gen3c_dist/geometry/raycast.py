"""Foreground masking by ray casting an edge mesh (spec section 7.5), in plain PyTorch.

The official code casts one ray per pixel against every triangle with an NVIDIA Warp kernel (Moeller-Trumbore,
eps 1e-8, no back-face culling, nearest hit with t > eps). Here the same per-pair test runs vectorised, in
chunks that bound memory, either over all rays x triangles (:func:`nearest_hit_all_pairs`, the reference) or
only over the screen tiles each triangle can cover (:func:`nearest_hit_binned`, the default). Binning drops
only pairs that cannot hit, so both give identical distances; at 704x1280 it tests ~1000x fewer pairs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gen3c_dist.geometry.pinhole import unit_pixel_rays

MT_EPS = 1e-8
MESH_DOWNSAMPLE = 4
OCCLUSION_MARGIN = 0.02
NO_HIT_LIMIT = 1e10  # the official kernel only keeps hits closer than this
DEFAULT_MAX_PAIRS = 1 << 22  # ray-triangle pairs per chunk: 16 MB per float32 temporary
TILE = 8  # screen tile side, in pixels, for binning
BIN_MARGIN_PX = 2.0  # slack around a triangle's projected box, far above float32 rounding of the hit point
BIN_MIN_Z = 1e-6  # triangles with a vertex at z <= this are not binned; they are tested against every ray

Vec3 = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # x, y, z as separate contiguous tensors (fast on CPU)


def edge_mesh_triangles(
    points_HW3: torch.Tensor, edge_mask_HW: torch.Tensor, *, downsample: int = MESH_DOWNSAMPLE
) -> torch.Tensor:
    """Triangles [T, 3, 3] (vertex positions) of the edge regions of a point grid.

    Points are resized bilinearly (align_corners=False) and the mask by nearest to (H//k, W//k). Every 2x2 quad
    with at least one masked vertex gives triangles (tl, tr, bl) and (tr, br, bl).
    """
    height, width = points_HW3.shape[0] // downsample, points_HW3.shape[1] // downsample
    if height < 2 or width < 2:
        return points_HW3.new_zeros(0, 3, 3)
    pts_13HW = F.interpolate(
        points_HW3.permute(2, 0, 1)[None], size=(height, width), mode="bilinear", align_corners=False
    )
    pts_HW3 = pts_13HW[0].permute(1, 2, 0)
    mask_HW = F.interpolate(edge_mask_HW[None, None].float(), size=(height, width), mode="nearest")[0, 0].bool()
    quads = mask_HW[:-1, :-1] | mask_HW[:-1, 1:] | mask_HW[1:, :-1] | mask_HW[1:, 1:]  # [h-1, w-1]
    tl, tr = pts_HW3[:-1, :-1][quads], pts_HW3[:-1, 1:][quads]
    bl, br = pts_HW3[1:, :-1][quads], pts_HW3[1:, 1:][quads]
    return torch.cat([torch.stack([tl, tr, bl], dim=1), torch.stack([tr, br, bl], dim=1)], dim=0)


def _split(v_N3: torch.Tensor) -> Vec3:
    return v_N3[..., 0].contiguous(), v_N3[..., 1].contiguous(), v_N3[..., 2].contiguous()


def _dot(a: Vec3, b: Vec3) -> torch.Tensor:
    # Written out in x, y, z order, like the Warp kernel's dot.
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _cross(a: Vec3, b: Vec3) -> Vec3:
    return (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])


def _triangle_terms(triangles_T33: torch.Tensor) -> tuple[Vec3, Vec3, Vec3, Vec3, torch.Tensor]:
    """Per-triangle parts of Moeller-Trumbore for rays from the origin: e1, e2, s = -v0, q = s x e1, e2.q."""
    v0_T3 = triangles_T33[:, 0]
    e1, e2, s = _split(triangles_T33[:, 1] - v0_T3), _split(triangles_T33[:, 2] - v0_T3), _split(-v0_T3)
    q = _cross(s, e1)
    return e1, e2, s, q, _dot(e2, q)


def _hit_distance(d: Vec3, e1: Vec3, e2: Vec3, s: Vec3, q: Vec3, e2q: torch.Tensor) -> torch.Tensor:
    """t of each broadcast (ray, triangle) pair, +inf on a miss; the per-pair test of the Warp kernel."""
    h = _cross(d, e2)
    a = _dot(e1, h)
    f = 1.0 / a
    u = f * _dot(s, h)
    v = f * _dot(d, q)
    t = f * e2q
    # Negated rejections, as the kernel's "continue" tests; a NaN t never passes t > eps.
    hit = ~(a.abs() < MT_EPS) & ~(u < 0) & ~(u > 1) & ~(v < 0) & ~(u + v > 1) & (t > MT_EPS) & (t < NO_HIT_LIMIT)
    return torch.where(hit, t, torch.tensor(float("inf"), dtype=t.dtype, device=t.device))


def nearest_hit_all_pairs(
    dirs_R3: torch.Tensor, triangles_T33: torch.Tensor, *, max_pairs: int = DEFAULT_MAX_PAIRS
) -> torch.Tensor:
    """Distance t [R] from the origin along each ray to the nearest triangle (0 = no hit); every pair tested."""
    num_rays, num_tris = dirs_R3.shape[0], triangles_T33.shape[0]
    t_R = dirs_R3.new_zeros(num_rays)
    if num_tris == 0 or num_rays == 0:
        return t_R
    terms = _triangle_terms(triangles_T33)  # each [T]
    rays_per_chunk = max(1, max_pairs // num_tris)
    for start in range(0, num_rays, rays_per_chunk):
        d = tuple(c[:, None] for c in _split(dirs_R3[start : start + rays_per_chunk]))  # each [R, 1]
        nearest_R = _hit_distance(d, *terms).amin(dim=1)
        t_R[start : start + rays_per_chunk] = torch.where(nearest_R.isinf(), 0.0, nearest_R)
    return t_R


def _triangle_tile_boxes(triangles_T33: torch.Tensor, K_33: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inclusive tile ranges [T, 4] = (tx0, tx1, ty0, ty1) a triangle can cover; empty (tx1 < tx0) if none.

    With every vertex in front of the camera, a hit point projects inside the projected triangle, so its pixel
    lies in the vertices' pixel box (+ a margin for rounding). Other triangles (a vertex behind or on the camera
    plane, non-finite projections) get the whole image, i.e. the all-pairs test.
    """
    cam_T33 = torch.matmul(triangles_T33, K_33.T)
    in_front_T = (triangles_T33[..., 2] > BIN_MIN_Z).all(dim=1)
    safe_z_T3 = torch.where(in_front_T[:, None], cam_T33[..., 2], torch.ones_like(cam_T33[..., 2]))
    px_T3, py_T3 = cam_T33[..., 0] / safe_z_T3, cam_T33[..., 1] / safe_z_T3
    bounds_T4 = torch.stack([px_T3.amin(1), px_T3.amax(1), py_T3.amin(1), py_T3.amax(1)], dim=1)
    margin_4 = torch.tensor([-BIN_MARGIN_PX, BIN_MARGIN_PX, -BIN_MARGIN_PX, BIN_MARGIN_PX], device=bounds_T4.device)
    binnable_T1 = (in_front_T & torch.isfinite(bounds_T4).all(dim=1))[:, None]
    full_4 = torch.tensor([0.0, width - 1.0, 0.0, height - 1.0], device=bounds_T4.device)
    box_T4 = torch.where(binnable_T1, bounds_T4 + margin_4, full_4)
    # Clamp in float before rounding, so huge or infinite coordinates never reach the integer cast.
    x0 = torch.ceil(box_T4[:, 0].clamp(-1, width)).long().clamp(min=0)
    x1 = torch.floor(box_T4[:, 1].clamp(-1, width)).long().clamp(max=width - 1)
    y0 = torch.ceil(box_T4[:, 2].clamp(-1, height)).long().clamp(min=0)
    y1 = torch.floor(box_T4[:, 3].clamp(-1, height)).long().clamp(max=height - 1)
    empty_T = (x1 < x0) | (y1 < y0)
    tiles_T4 = torch.stack([x0 // TILE, x1 // TILE, y0 // TILE, y1 // TILE], dim=1)
    tiles_T4[empty_T] = torch.tensor([0, -1, 0, -1], device=tiles_T4.device)
    return tiles_T4


def _tile_pairs(tiles_T4: torch.Tensor, tiles_x: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every (triangle, tile) pair inside the boxes: (triangle index [P], flat tile index [P])."""
    span_x = (tiles_T4[:, 1] - tiles_T4[:, 0] + 1).clamp(min=0)
    span_y = (tiles_T4[:, 3] - tiles_T4[:, 2] + 1).clamp(min=0)
    counts_T = span_x * span_y
    tri_P = torch.repeat_interleave(torch.arange(len(counts_T), device=tiles_T4.device), counts_T)
    local_P = torch.arange(len(tri_P), device=tiles_T4.device) - (torch.cumsum(counts_T, 0) - counts_T)[tri_P]
    tile_x = tiles_T4[tri_P, 0] + local_P % span_x[tri_P]
    tile_y = tiles_T4[tri_P, 2] + local_P // span_x[tri_P]
    return tri_P, tile_y * tiles_x + tile_x


def nearest_hit_binned(
    dirs_HW3: torch.Tensor, triangles_T33: torch.Tensor, K_33: torch.Tensor, *, max_pairs: int = DEFAULT_MAX_PAIRS
) -> torch.Tensor:
    """Same distances [H, W] as :func:`nearest_hit_all_pairs`, testing each triangle only on its tiles.

    ``dirs`` must be the unit pixel rays of ``K`` (:func:`unit_pixel_rays`).
    """
    height, width, _ = dirs_HW3.shape
    if triangles_T33.shape[0] == 0:
        return dirs_HW3.new_zeros(height, width)
    tiles_y, tiles_x = -(-height // TILE), -(-width // TILE)
    # Rays grouped per tile [tiles, TILE*TILE, 3]; padding rays are zero, so |a| = 0 < eps rejects them.
    padded = F.pad(dirs_HW3.permute(2, 0, 1), (0, tiles_x * TILE - width, 0, tiles_y * TILE - height))
    tile_rays = padded.view(3, tiles_y, TILE, tiles_x, TILE).permute(1, 3, 2, 4, 0).reshape(-1, TILE * TILE, 3)
    tri_P, tile_P = _tile_pairs(_triangle_tile_boxes(triangles_T33, K_33, height, width), tiles_x)
    terms = _triangle_terms(triangles_T33)
    best = torch.full((tile_rays.shape[0] * TILE * TILE,), float("inf"), dtype=dirs_HW3.dtype, device=dirs_HW3.device)
    lane = torch.arange(TILE * TILE, device=dirs_HW3.device)
    pairs_per_chunk = max(1, max_pairs // (TILE * TILE))
    for start in range(0, len(tri_P), pairs_per_chunk):
        tri, tile = tri_P[start : start + pairs_per_chunk], tile_P[start : start + pairs_per_chunk]
        tri_vecs = [tuple(c[tri, None] for c in vec) for vec in terms[:4]]  # each component [P, 1]
        t_PL = _hit_distance(_split(tile_rays[tile]), *tri_vecs, terms[4][tri, None])
        best.scatter_reduce_(0, (tile[:, None] * TILE * TILE + lane).reshape(-1), t_PL.reshape(-1), reduce="amin")
    t_HW = best.view(tiles_y, tiles_x, TILE, TILE).permute(0, 2, 1, 3).reshape(tiles_y * TILE, tiles_x * TILE)
    t_HW = t_HW[:height, :width]
    return torch.where(t_HW.isinf(), 0.0, t_HW)


def occluded_by_foreground(
    cam_points_HW3: torch.Tensor,
    edge_mask_HW: torch.Tensor,
    K_33: torch.Tensor,
    splat_depth_HW: torch.Tensor,
    *,
    margin: float = OCCLUSION_MARGIN,
    max_pairs: int = DEFAULT_MAX_PAIRS,
) -> torch.Tensor:
    """Bool [H, W]: target pixels whose ray meets the edge mesh in front of the splatted depth.

    ``cam_points`` are the source points in the target camera frame. A pixel is occluded when the mesh z-depth
    t * ray_z satisfies 0 < mesh_z and mesh_z + margin < splatted depth.
    """
    height, width = splat_depth_HW.shape
    triangles_T33 = edge_mesh_triangles(cam_points_HW3, edge_mask_HW)
    if triangles_T33.shape[0] == 0:
        return torch.zeros(height, width, dtype=torch.bool, device=splat_depth_HW.device)
    dirs_HW3 = unit_pixel_rays(K_33, height, width)
    if bool((K_33[2] == torch.tensor([0.0, 0.0, 1.0], device=K_33.device)).all()):
        t_HW = nearest_hit_binned(dirs_HW3, triangles_T33, K_33, max_pairs=max_pairs)
    else:  # binning assumes a pinhole K with bottom row [0, 0, 1]
        t_HW = nearest_hit_all_pairs(dirs_HW3.reshape(-1, 3), triangles_T33, max_pairs=max_pairs).view(height, width)
    # The official code resizes mesh_z to (H, W) bilinearly; at the same size that is the identity.
    mesh_z_HW = t_HW * dirs_HW3[..., 2]
    return (mesh_z_HW + margin < splat_depth_HW) & (mesh_z_HW > 0)
