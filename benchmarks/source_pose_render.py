"""How much the frame-0 cache render (the exact source pose) depends on rounding: mask pixels that change when
the camera moves by 1e-6.

    python benchmarks/source_pose_render.py                         # demo scene, 704x1280, left / center_facing
    python benchmarks/source_pose_render.py --height 88 --width 160 --start generic --alone
    PYTHONPATH=<old tree> python benchmarks/source_pose_render.py --save /tmp/old.npz    # then, on this tree:
    python benchmarks/source_pose_render.py --compare /tmp/old.npz

At the source pose every point lands on an integer pixel up to rounding, where the splat is discontinuous (the
integer-landing quirk, see gen3c_dist/geometry/pinhole.py): a point exactly on its pixel gives its neighbours
nothing, one a hair off gives them ~1e-7, which fills holes next to it. The script builds the default cache
(demo scene, depth-edge filter 0.05, 2 buffers max) from the source camera and renders frame 0 of the path,
paired with frame 1 as the pipeline does (``--alone``: in a call of its own, like the last of 121 frames or an
alignment render). It renders it again with frame 0's camera moved by a rigid motion of size ``--perturbation``
(rotation in radians and translation, generic directions) and prints the mask pixels that differ, and how far
each render is from the source image where its mask is set. ``--start generic`` uses a non-identity source
camera (the path starts from it). ``--save`` writes the exact render; ``--compare`` counts the mask pixels
where the exact render differs from a saved one. Only Cache3D and generate_trajectory are used, so the script
runs unchanged against older checkouts.
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from gen3c_dist.demo_scene import render_demo_scene
from gen3c_dist.geometry.cache3d import Cache3D
from gen3c_dist.geometry.camera import generate_trajectory

GENERIC_AXIS = torch.tensor([0.36, -0.48, 0.8])  # unit
GENERIC_SHIFT = torch.tensor([0.6, 0.64, -0.48])  # unit


def rigid_motion(angle: float, shift: float) -> torch.Tensor:
    """4x4 rotation by ``angle`` about a generic axis, then translation by ``shift`` along a generic direction."""
    x, y, z = (GENERIC_AXIS * angle).tolist()
    skew = torch.tensor([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]], dtype=torch.float64)
    motion = torch.eye(4, dtype=torch.float64)
    motion[:3, :3] = torch.linalg.matrix_exp(skew)
    motion[:3, 3] = GENERIC_SHIFT.double() * shift
    return motion.float()


def source_error(render_13HW: torch.Tensor, mask_11HW: torch.Tensor, image_13HW: torch.Tensor) -> float:
    """max |render - source| over the pixels where the render's mask is set."""
    hit_HW = mask_11HW[0, 0].bool()
    return float((render_13HW[0] - image_13HW[0])[:, hit_HW].abs().max()) if bool(hit_HW.any()) else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--height", type=int, default=704)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--trajectory", default="left")
    parser.add_argument("--camera-rotation", default="center_facing")
    parser.add_argument("--num-frames", type=int, default=121)
    parser.add_argument("--perturbation", type=float, default=1e-6)
    parser.add_argument("--filter-points-threshold", type=float, default=0.05)
    parser.add_argument("--start", choices=("identity", "generic"), default="identity")
    parser.add_argument("--alone", action="store_true", help="render frame 0 in a call of its own")
    parser.add_argument("--save", help="write the exact frame-0 render (image, mask) to this .npz")
    parser.add_argument("--compare", help="count the mask pixels where the exact render differs from this .npz")
    args = parser.parse_args()

    rgb, depth, K = render_demo_scene(args.height, args.width)
    image_13HW = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 127.5 - 1
    depth_11HW, K_33 = torch.from_numpy(depth)[None, None].float(), torch.from_numpy(K).float()
    start_44 = torch.eye(4) if args.start == "identity" else rigid_motion(0.05, 0.1)
    cache = Cache3D(image_13HW, depth_11HW, start_44[None], K_33[None], generator=torch.Generator().manual_seed(0),
                    frame_buffer_max=2, filter_points_threshold=args.filter_points_threshold)
    w2cs_N44, Ks_N33 = generate_trajectory(
        args.trajectory, camera_rotation=args.camera_rotation, num_frames=args.num_frames, movement_distance=0.3,
        center_depth=1.0, initial_w2c_44=start_44, initial_K_33=K_33,
    )
    frames = 1 if args.alone else 2
    pair_w2cs_244, pair_Ks_233 = w2cs_N44[:frames].clone(), Ks_N33[:frames]
    exact_img, exact_mask = cache.render(pair_w2cs_244[None], pair_Ks_233[None])
    pair_w2cs_244[0] = rigid_motion(args.perturbation, args.perturbation) @ pair_w2cs_244[0]
    moved_img, moved_mask = cache.render(pair_w2cs_244[None], pair_Ks_233[None])
    exact_img, exact_mask = exact_img[0, 0, :1], exact_mask[0, 0, :1]  # frame 0, buffer 0: [1, C, H, W]
    moved_img, moved_mask = moved_img[0, 0, :1], moved_mask[0, 0, :1]
    report = {
        "size": [args.height, args.width], "start": args.start, "trajectory": args.trajectory,
        "camera_rotation": args.camera_rotation, "perturbation": args.perturbation, "alone": args.alone,
        "frame0_equals_source_pose": bool(torch.equal(w2cs_N44[0], start_44)),
        "mask_pixels_exact": int(exact_mask.sum()), "mask_pixels_perturbed": int(moved_mask.sum()),
        "mask_pixels_differing": int((exact_mask != moved_mask).sum()),
        "max_abs_vs_source_exact": source_error(exact_img, exact_mask, image_13HW),
        "max_abs_vs_source_perturbed": source_error(moved_img, moved_mask, image_13HW),
    }
    if args.save:
        np.savez(args.save, image=exact_img.numpy(), mask=exact_mask.numpy())
    if args.compare:
        with np.load(args.compare, allow_pickle=False) as saved:
            saved_img, saved_mask = torch.from_numpy(saved["image"]), torch.from_numpy(saved["mask"])
        if saved_mask.shape != exact_mask.shape:
            raise ValueError(f"{args.compare}: mask shape {list(saved_mask.shape)}, expected {list(exact_mask.shape)}")
        both_HW = (saved_mask * exact_mask)[0, 0].bool()
        report["mask_pixels_differing_from_saved"] = int((saved_mask != exact_mask).sum())
        report["max_abs_vs_saved_on_common_mask"] = float((saved_img - exact_img)[0][:, both_HW].abs().max())
    print(json.dumps(report))


if __name__ == "__main__":
    main()
