"""Checks of user-supplied cameras: every w2c a rigid pose, every K a pinhole with positive focal lengths.

Shared by every loader that takes cameras from a file (trajectory files, source videos, key frames), so a bad
pose is refused with the same words wherever it comes from. Each check raises one ``ValueError`` that names the
input (``what``: a file and key, usually), the first bad frame, and the measured problem.

Rigid means: finite, bottom row ``[0, 0, 0, 1]``, and a rotation block ``R`` with ``max|RᵀR − I| <= tol`` and
``det R > 0``. ``tol`` is 1e-3: float32 poses (a ViPE c2w inverted in float32, a COLMAP export) sit near 1e-6,
while a scaled or sheared matrix, or a projection pasted in by mistake, is off by far more. A near-zero
determinant is reported as "not invertible", the usual cause being an all-zero or degenerate matrix.
"""

from __future__ import annotations

from typing import Union

import numpy as np
import torch

from gen3c_dist.errors import InputError

ArrayLike = Union[np.ndarray, torch.Tensor]

ORTHOGONALITY_TOL = 1e-3
SINGULAR_DET = 1e-6


def _as_float64(array: ArrayLike) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().cpu().to(torch.float64).numpy()
    return np.asarray(array, dtype=np.float64)


def check_w2c(w2c: ArrayLike, *, what: str, tol: float = ORTHOGONALITY_TOL) -> None:
    """Refuse any w2c of ``w2c`` [N, 4, 4] (or [4, 4]) that is not a rigid world-to-camera pose."""
    w2c_N44 = _as_float64(w2c)
    if w2c_N44.ndim == 2:
        w2c_N44 = w2c_N44[None]
    if w2c_N44.ndim != 3 or w2c_N44.shape[1:] != (4, 4):
        raise InputError(f"{what}: expected w2c matrices of shape [N, 4, 4], got {list(w2c_N44.shape)}")
    finite_N = np.isfinite(w2c_N44).all(axis=(1, 2))
    if not finite_N.all():
        raise InputError(f"{what}: w2c of frame {int(np.flatnonzero(~finite_N)[0])} holds non-finite values")
    bottom_err_N = np.abs(w2c_N44[:, 3, :] - [0.0, 0.0, 0.0, 1.0]).max(axis=1)
    if (bottom_err_N > 1e-6).any():
        frame = int(np.flatnonzero(bottom_err_N > 1e-6)[0])
        raise InputError(f"{what}: w2c of frame {frame} has bottom row {w2c_N44[frame, 3].tolist()}, not [0, 0, 0, 1]")
    R_N33 = w2c_N44[:, :3, :3]
    det_N = np.linalg.det(R_N33)
    singular_N = np.abs(det_N) < SINGULAR_DET
    if singular_N.any():
        frame = int(np.flatnonzero(singular_N)[0])
        raise InputError(f"{what}: w2c of frame {frame} is not invertible (det of its rotation = {det_N[frame]:.3g})")
    ortho_err_N = np.abs(np.swapaxes(R_N33, 1, 2) @ R_N33 - np.eye(3)).max(axis=(1, 2))
    bad_N = (ortho_err_N > tol) | (det_N < 0)
    if bad_N.any():
        frame = int(np.flatnonzero(bad_N)[0])
        raise InputError(
            f"{what}: w2c of frame {frame} is not a rigid pose: its rotation has orthogonality error "
            f"max|R^T R - I| = {ortho_err_N[frame]:.3g} (allowed {tol:g}) and det = {det_N[frame]:.4g} (must be +1)"
        )


def check_intrinsics(K: ArrayLike, *, what: str) -> None:
    """Refuse any K of ``K`` [N, 3, 3] (or [3, 3]) that is not finite with positive focal lengths."""
    K_N33 = _as_float64(K)
    if K_N33.ndim == 2:
        K_N33 = K_N33[None]
    if K_N33.ndim != 3 or K_N33.shape[1:] != (3, 3):
        raise InputError(f"{what}: expected intrinsics of shape [N, 3, 3], got {list(K_N33.shape)}")
    finite_N = np.isfinite(K_N33).all(axis=(1, 2))
    if not finite_N.all():
        raise InputError(f"{what}: intrinsics of frame {int(np.flatnonzero(~finite_N)[0])} hold non-finite values")
    bad_N = (K_N33[:, 0, 0] <= 0) | (K_N33[:, 1, 1] <= 0)
    if bad_N.any():
        frame = int(np.flatnonzero(bad_N)[0])
        raise InputError(
            f"{what}: intrinsics of frame {frame} have focal lengths fx = {K_N33[frame, 0, 0]:g}, "
            f"fy = {K_N33[frame, 1, 1]:g}; both must be positive (K in pixels)"
        )
