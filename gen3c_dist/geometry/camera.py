"""Camera poses: the look-at matrix, the built-in GEN3C trajectories, and user trajectory files.

Conventions (spec section 7): ``w2c`` is world-to-camera with camera axes x right, y down, z forward; ``K`` is in
pixels. Every tensor produced here is float32.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

from gen3c_dist.errors import InputError
from gen3c_dist.geometry.pose_checks import check_intrinsics, check_w2c

LINEAR_TRAJECTORIES: dict[str, tuple[int, float]] = {
    # name -> (axis index, sign); y points down, so "up" moves along -y.
    "left": (0, -1.0),
    "right": (0, 1.0),
    "up": (1, -1.0),
    "down": (1, 1.0),
    "zoom_in": (2, 1.0),
    "zoom_out": (2, -1.0),
}
SPIRAL_TRAJECTORIES: dict[str, float] = {"clockwise": 1.0, "counterclockwise": -1.0}
TRAJECTORIES: tuple[str, ...] = tuple(LINEAR_TRAJECTORIES) + tuple(SPIRAL_TRAJECTORIES)
# How far along the camera offset p the look-at target moves: (0,0,c) + k*p.
CAMERA_ROTATIONS: dict[str, float] = {"center_facing": 0.0, "no_rotation": 1.0, "trajectory_aligned": 2.0}


def look_at_w2c(camera_pos_N3: torch.Tensor, target_N3: torch.Tensor) -> torch.Tensor:
    """Look-at world-to-camera matrices [N, 4, 4] with rows [right; up; forward] and up0 = +y.

    The translation column is -p, not -R p (official quirk kept on purpose, spec section 7.7): the true camera
    centre is R^T p, which drifts from p once the camera rotates, and GEN3C was trained on these poses.
    """
    pos_N3 = camera_pos_N3.to(torch.float32)
    forward_N3 = target_N3.to(torch.float32) - pos_N3
    up0_N3 = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float32, device=pos_N3.device).expand_as(forward_N3)
    f_norm_N1 = torch.linalg.vector_norm(forward_N3, dim=-1, keepdim=True)
    right_N3 = torch.linalg.cross(up0_N3, forward_N3 / f_norm_N1, dim=-1)
    r_norm_N1 = torch.linalg.vector_norm(right_N3, dim=-1, keepdim=True)
    if not (bool((f_norm_N1 > 0).all()) and bool((r_norm_N1 > 0).all())):
        raise InputError(
            "look-at is degenerate: a camera position reaches its target or looks straight along the y axis "
            "(reduce movement_distance or change center_depth)"
        )
    forward_N3 = forward_N3 / f_norm_N1
    right_N3 = right_N3 / r_norm_N1
    up_N3 = torch.linalg.cross(forward_N3, right_N3, dim=-1)
    w2c_N44 = torch.eye(4, dtype=torch.float32, device=pos_N3.device).repeat(pos_N3.shape[0], 1, 1)
    w2c_N44[:, 0, :3] = right_N3
    w2c_N44[:, 1, :3] = up_N3
    w2c_N44[:, 2, :3] = forward_N3
    w2c_N44[:, :3, 3] = -pos_N3
    return w2c_N44


def trajectory_offsets(name: str, *, num_frames: int, movement_distance: float, center_depth: float) -> torch.Tensor:
    """Camera positions p_i [N, 3] (float32) of a built-in trajectory, relative to the start camera.

    Official quirks kept on purpose (spec section 7.7): linear steps are i*d*c/N for i = 0..N-1 (the last offset is
    (N-1)/N*d*c, not d*c) and spirals use theta_i = 2*pi*i/(N-1), one full circle ending at the start. The
    arithmetic runs in float64 and is rounded once to float32, as the official Python floats are.
    """
    i_N = torch.arange(num_frames, dtype=torch.float64)
    pos_N3 = torch.zeros(num_frames, 3, dtype=torch.float64)
    if name in LINEAR_TRAJECTORIES:
        axis, sign = LINEAR_TRAJECTORIES[name]
        pos_N3[:, axis] = i_N * movement_distance * center_depth / num_frames * sign
    else:
        sign = SPIRAL_TRAJECTORIES[name]
        theta_N = 2 * math.pi * i_N / (num_frames - 1)
        pos_N3[:, 0] = movement_distance * (torch.cos(theta_N) - 1) * sign * center_depth
        pos_N3[:, 1] = movement_distance * torch.sin(theta_N) * center_depth
    return pos_N3.to(torch.float32)


def _check_trajectory_args(
    name: str, rotation: str, num_frames: int, movement_distance: float, center_depth: float
) -> None:
    if name not in TRAJECTORIES:
        raise InputError(f"trajectory: unknown name {name!r}; valid choices are {', '.join(TRAJECTORIES)}")
    if rotation not in CAMERA_ROTATIONS:
        raise InputError(
            f"camera_rotation: unknown name {rotation!r}; valid choices are {', '.join(CAMERA_ROTATIONS)}"
        )
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 2:
        raise InputError(f"num_frames: must be an integer >= 2, got {num_frames!r}")
    if not math.isfinite(movement_distance) or movement_distance <= 0:
        raise InputError(f"movement_distance: must be finite and > 0, got {movement_distance!r}")
    if not math.isfinite(center_depth) or center_depth <= 0:
        raise InputError(f"center_depth: must be finite and > 0, got {center_depth!r}")


def trajectory_matrices(
    name: str, *, camera_rotation: str, num_frames: int, movement_distance: float, center_depth: float,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """The offsets L_i [N, 4, 4] (float32) of a built-in trajectory: look_at(p_i, target_i), relative to the start.

    target_i = (0, 0, c) + k*p_i, k = 0 / 1 / 2 for center_facing / no_rotation / trajectory_aligned (spec 7.7).
    ``num_frames`` is the total video length (all autoregressive chunks), as in the official script.
    """
    _check_trajectory_args(name, camera_rotation, num_frames, float(movement_distance), float(center_depth))
    pos_N3 = trajectory_offsets(
        name, num_frames=num_frames, movement_distance=float(movement_distance), center_depth=float(center_depth)
    ).to(device)
    centre_3 = torch.tensor([0.0, 0.0, float(center_depth)], dtype=torch.float32, device=device)
    return look_at_w2c(pos_N3, centre_3 + pos_N3 * CAMERA_ROTATIONS[camera_rotation])


def generate_trajectory(
    name: str,
    *,
    camera_rotation: str,
    num_frames: int,
    movement_distance: float,
    center_depth: float,
    initial_w2c_44: torch.Tensor,
    initial_K_33: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A built-in GEN3C camera path from one start camera: (w2cs [N, 4, 4], Ks [N, 3, 3]), both float32.

    ``w2cs[i] = L_i @ initial_w2c`` (:func:`trajectory_matrices`); ``Ks`` is ``initial_K`` repeated (spec 7.7).
    """
    if initial_w2c_44.shape != (4, 4) or initial_K_33.shape != (3, 3):
        raise InputError(
            f"initial_w2c/initial_K: expected shapes (4, 4) and (3, 3), got {tuple(initial_w2c_44.shape)} "
            f"and {tuple(initial_K_33.shape)}"
        )
    offsets_N44 = trajectory_matrices(
        name, camera_rotation=camera_rotation, num_frames=num_frames, movement_distance=movement_distance,
        center_depth=center_depth, device=initial_w2c_44.device,
    )
    w2cs_N44 = torch.matmul(offsets_N44, initial_w2c_44.to(torch.float32).expand(num_frames, 4, 4))
    Ks_N33 = initial_K_33.to(torch.float32).expand(num_frames, 3, 3).clone()
    return w2cs_N44, Ks_N33


def generate_video_trajectory(
    name: str,
    *,
    camera_rotation: str,
    movement_distance: float,
    center_depth: float,
    source_w2c_N44: torch.Tensor,
    source_K_N33: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A built-in camera path re-shooting a video: ``w2cs[i] = L_i @ source_w2c[i]`` (spec section 8.1).

    Each offset is composed onto its own frame's source camera, so the new path follows the source camera's
    motion. N is the number of source frames, which is the whole output length (the official script needs
    ``#frames == num_video_frames``). Ks are the source's per-frame intrinsics themselves, not repeated. Both
    come back float32, whatever the source's dtype (the official code keeps a float64 source and then fails in
    the cache; we cast).
    """
    if source_w2c_N44.dim() != 3 or source_w2c_N44.shape[1:] != (4, 4):
        raise ValueError(f"source_w2c: expected shape [N, 4, 4], got {list(source_w2c_N44.shape)}")
    num_frames = source_w2c_N44.shape[0]
    if tuple(source_K_N33.shape) != (num_frames, 3, 3):
        raise ValueError(f"source_K: expected shape [{num_frames}, 3, 3] to match source_w2c, "
                         f"got {list(source_K_N33.shape)}")
    offsets_N44 = trajectory_matrices(
        name, camera_rotation=camera_rotation, num_frames=num_frames, movement_distance=movement_distance,
        center_depth=center_depth, device=source_w2c_N44.device,
    )
    w2cs_N44 = torch.matmul(offsets_N44, source_w2c_N44.to(torch.float32))
    return w2cs_N44, source_K_N33.to(torch.float32).clone()


def _read_trajectory_arrays(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise InputError(f"trajectory file {path}: not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            raw = json.loads(path.read_text())
            if not isinstance(raw, dict):
                raise InputError("top level is not an object")
            return {k: np.asarray(raw[k], dtype=np.float64) for k in ("w2c", "intrinsics") if k in raw}
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                return {k: np.asarray(npz[k], dtype=np.float64) for k in ("w2c", "intrinsics") if k in npz.files}
    except (ValueError, TypeError, OSError) as err:
        raise InputError(f"trajectory file {path}: cannot be read as {suffix[1:]} arrays ({err})") from None
    raise InputError(f"trajectory file {path}: unsupported extension {suffix!r}; use .json or .npz")


def _validate_trajectory(path: Path, w2c: np.ndarray, K: np.ndarray, num_frames: int) -> None:
    if w2c.ndim != 3 or w2c.shape[1:] != (4, 4):
        raise InputError(f"trajectory file {path}: 'w2c' must have shape [N, 4, 4], got {list(w2c.shape)}")
    if w2c.shape[0] != num_frames:
        raise InputError(f"trajectory file {path}: has {w2c.shape[0]} poses, but {num_frames} frames are requested")
    if K.shape != (3, 3) and K.shape != (num_frames, 3, 3):
        raise InputError(
            f"trajectory file {path}: 'intrinsics' must have shape [3, 3] or [{num_frames}, 3, 3], got {list(K.shape)}"
        )
    # Rigid poses and positive focal lengths; the messages name the file, the frame and the measured problem.
    check_w2c(w2c, what=f"trajectory file {path}: 'w2c'")
    check_intrinsics(K, what=f"trajectory file {path}: 'intrinsics'")


def load_trajectory_file(
    path: str | Path, *, num_frames: int, default_intrinsics_N33: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read a user camera path: (w2cs [N, 4, 4], Ks [N, 3, 3]) float32 from a .json or .npz file.

    The file holds ``w2c`` [N, 4, 4] world-to-camera matrices and ``intrinsics`` in pixels, either [N, 3, 3] or
    one [3, 3] shared by every frame. N must equal ``num_frames``. Any problem raises one ValueError that names
    the file.

    The poses are absolute, in the world of the input's cameras: for a video source that is the source video's
    world, so a file re-shoots the video along any path (the built-in trajectories are offsets instead,
    :func:`generate_video_trajectory`). ``default_intrinsics_N33`` (a video's per-frame K) is used when the file
    has no ``intrinsics``; without it the key is required.
    """
    path = Path(path)
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1:
        raise InputError(f"num_frames: must be a positive integer, got {num_frames!r}")
    arrays = _read_trajectory_arrays(path)
    if "intrinsics" not in arrays and default_intrinsics_N33 is not None:
        if tuple(default_intrinsics_N33.shape) != (num_frames, 3, 3):
            raise ValueError(f"default intrinsics: expected shape [{num_frames}, 3, 3], "
                             f"got {list(default_intrinsics_N33.shape)}")
        arrays["intrinsics"] = default_intrinsics_N33.detach().cpu().to(torch.float64).numpy()
    for key in ("w2c", "intrinsics"):
        if key not in arrays:
            raise InputError(f"trajectory file {path}: missing key '{key}'")
    w2c, K = arrays["w2c"], arrays["intrinsics"]
    _validate_trajectory(path, w2c, K, num_frames)
    w2cs_N44 = torch.from_numpy(w2c).to(torch.float32)
    Ks_N33 = torch.from_numpy(K).to(torch.float32).expand(num_frames, 3, 3).clone()
    return w2cs_N44, Ks_N33
