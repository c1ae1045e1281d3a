"""Camera checks shared by every loader of user cameras (gen3c_dist.geometry.pose_checks)."""

import math

import numpy as np
import pytest
import torch

from gen3c_dist.geometry.pose_checks import check_intrinsics, check_w2c


def _rotation_z(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def _poses(n: int = 4) -> np.ndarray:
    w2c = np.tile(np.eye(4), (n, 1, 1))
    for i in range(n):
        w2c[i, :3, :3] = _rotation_z(0.3 * i)
        w2c[i, :3, 3] = [0.1 * i, -0.2, 0.5]
    return w2c


def test_rigid_poses_in_float32_pass():
    check_w2c(torch.from_numpy(_poses()).float(), what="cams")
    check_w2c(_poses()[0], what="one pose")  # a single [4, 4] is accepted too


@pytest.mark.parametrize(
    "corrupt, words",
    [
        (lambda w: w.__setitem__((2, slice(0, 3), slice(0, 3)), 0.0), "frame 2 is not invertible (det of its rotation = 0)"),
        (lambda w: w.__setitem__((1, slice(0, 3), slice(0, 3)), 2 * w[1, :3, :3]), "frame 1 is not a rigid pose"),
        (lambda w: w.__setitem__((3, 0, 1), w[3, 0, 1] + 0.05), "frame 3 is not a rigid pose"),
        (lambda w: w.__setitem__((0, 0), -w[0, 0]), "det = -1"),  # a reflection
        (lambda w: w.__setitem__((1, 3, 2), 0.5), "frame 1 has bottom row"),
        (lambda w: w.__setitem__((2, 0, 3), np.nan), "frame 2 holds non-finite values"),
    ],
)
def test_bad_poses_name_the_frame_and_the_problem(corrupt, words):
    w2c = _poses()
    corrupt(w2c)
    with pytest.raises(ValueError) as err:
        check_w2c(w2c, what="camera.npz['w2c']")
    assert str(err.value).startswith("camera.npz['w2c']: w2c of frame")
    assert words in str(err.value)


def test_scaled_rotation_reports_the_orthogonality_error():
    w2c = _poses()
    w2c[1, :3, :3] *= 2.0  # R^T R = 4 I: error 3
    with pytest.raises(ValueError, match=r"max\|R\^T R - I\| = 3 \(allowed 0.001\)"):
        check_w2c(w2c, what="x")


def test_shape_is_checked():
    with pytest.raises(ValueError, match=r"shape \[N, 4, 4\], got \[2, 3, 4\]"):
        check_w2c(np.zeros((2, 3, 4)), what="x")


def test_intrinsics_need_positive_focal_lengths():
    K = np.tile(np.array([[50.0, 0, 32], [0, 50, 24], [0, 0, 1]]), (3, 1, 1))
    check_intrinsics(K, what="K")
    K[2, 1, 1] = 0.0
    with pytest.raises(ValueError, match=r"K: intrinsics of frame 2 have focal lengths fx = 50, fy = 0"):
        check_intrinsics(K, what="K")
    K[2, 1, 1] = np.inf
    with pytest.raises(ValueError, match="frame 2 hold non-finite values"):
        check_intrinsics(K, what="K")
