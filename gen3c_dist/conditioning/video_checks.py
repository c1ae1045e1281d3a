"""Value checks shared by the source-video loaders (directory, .pt, ViPE); each raises one named ValueError.

* Masks hold 0 or 1 only (bool, integers or floats). The official cache multiplies its splat weights by the mask,
  so a fractional or 0/255 mask would re-weight points instead of selecting them; it is refused.
* Where the mask is on, depth must be finite and > 0: zero depth there would put the point at the camera centre
  (the official unprojection maps depth 0 to the world origin and then splats it, spec section 7.2), and NaN/inf
  are garbage. Where the mask is off the depth is kept as given, unchecked: it selects no point, but it still
  enters the depth-edge filter of its neighbours and the z-buffer max, exactly as in the official code (after
  its ``nan_to_num(100)`` and ``clamp(0, 100)``), so replacing it would change numbers.
* Cameras: every w2c rigid and invertible, every K with positive focal lengths (``geometry.pose_checks``).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from gen3c_dist.geometry.pose_checks import check_intrinsics, check_w2c


def check_real_array(array: np.ndarray, *, what: str, shape: Sequence[Optional[int]]) -> None:
    """A real numeric (or bool) array whose dims match ``shape`` (None = any size)."""
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{what}: must hold real numbers, got dtype {array.dtype}")
    want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
    if array.ndim != len(shape) or any(s is not None and s != n for s, n in zip(shape, array.shape)):
        raise ValueError(f"{what}: expected shape {want}, got {list(array.shape)}")


def check_mask_values(mask: np.ndarray, *, what: str) -> None:
    """Refuse a mask with values other than 0 and 1."""
    if mask.dtype == np.bool_:
        return
    bad = ~((mask == 0) | (mask == 1))
    if bad.any():
        frame = int(np.argwhere(bad)[0][0])
        values = np.unique(mask[bad])[:5].tolist()
        raise ValueError(f"{what}: values must be 0 or 1 (or bool); frame {frame} holds {values}")


def check_depth_where_masked(depth_THW: np.ndarray, mask_THW: np.ndarray, *, what: str,
                             frame_labels: Optional[Sequence[int]] = None) -> None:
    """Refuse non-finite or non-positive depth where the mask is on; ``frame_labels`` name frames in messages."""
    on = mask_THW.astype(bool)
    bad = on & ~(np.isfinite(depth_THW) & (depth_THW > 0))
    if bad.any():
        frame = int(np.argwhere(bad)[0][0])
        y, x = (int(v) for v in np.argwhere(bad[frame])[0])
        label = frame if frame_labels is None else frame_labels[frame]
        raise ValueError(
            f"{what}: frame {label}: {int(bad[frame].sum())} pixel(s) with zero, negative or non-finite depth "
            f"where the mask is on (first at x={x}, y={y}: {float(depth_THW[frame, y, x])}); depth must be > 0 "
            "there, or mask those pixels off"
        )


def check_video_cameras(w2c_T44: np.ndarray, K_T33: np.ndarray, *, what_w2c: str, what_K: str) -> None:
    """Rigid, invertible w2c and positive-focal K for every frame (messages name the file and the frame)."""
    check_w2c(w2c_T44, what=what_w2c)
    check_intrinsics(K_T33, what=what_K)


def check_lengths(counts: dict[str, int]) -> None:
    """Refuse inputs whose frame counts differ; ``counts`` maps a named input (file, key) to its length."""
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{name}: {count}" for name, count in counts.items())
        raise ValueError(f"source video: frame counts differ ({listed}); every input needs one entry per frame")


def check_resolution(sizes: dict[str, tuple[int, int]], height: int, width: int, *, why: str) -> None:
    """Refuse any input whose (H, W) is not the run's ``height`` x ``width``."""
    for name, (h, w) in sizes.items():
        if (h, w) != (height, width):
            raise ValueError(f"{name}: is {h}x{w} (HxW), but the run needs {height}x{width}; {why}")
