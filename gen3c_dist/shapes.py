"""The shapes every layer agrees on: the 121-frame chunk, the tokenizer's compression, the DiT's token grid.

One definition each, so the runner, the conditioning, the tokenizer config and the performance tools cannot
drift apart. Pure integer arithmetic, importable from anywhere.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gen3c_dist.errors import InputError

if TYPE_CHECKING:
    from gen3c_dist.config import ModelConfig

CHUNK_FRAMES = 121  # the tokenizer's pixel chunk; consecutive chunks share one frame (spec 1.6)
CHUNK_STRIDE = CHUNK_FRAMES - 1  # videos are CHUNK_STRIDE * K + 1 frames long
TEMPORAL_COMPRESSION = 8  # Cosmos CV8x8x8
SPATIAL_COMPRESSION = 8


def latent_thw(height: int, width: int, *, pixel_frames: int = CHUNK_FRAMES) -> tuple[int, int, int]:
    """Latent grid of one chunk: 121 frames at 704x1280 -> (16, 88, 160)."""
    if height % (2 * SPATIAL_COMPRESSION) or width % (2 * SPATIAL_COMPRESSION) or height <= 0 or width <= 0:
        raise InputError(f"height x width = {height}x{width} must be positive multiples of 16 (tokenizer x8, patch x2)")
    if pixel_frames < 1 or (pixel_frames - 1) % TEMPORAL_COMPRESSION:
        raise InputError(f"pixel_frames={pixel_frames} must be 1 + 8k")
    return 1 + (pixel_frames - 1) // TEMPORAL_COMPRESSION, height // SPATIAL_COMPRESSION, width // SPATIAL_COMPRESSION


def checked_latent(model_cfg: "ModelConfig", latent_THW: tuple[int, ...]) -> tuple[int, int, int]:
    if len(latent_THW) != 3 or any(int(n) <= 0 for n in latent_THW):
        raise ValueError(f"latent shape {tuple(latent_THW)} must be three positive sizes (T, H, W)")
    T, H, W = (int(n) for n in latent_THW)
    pt, ps = model_cfg.patch_temporal, model_cfg.patch_spatial
    if T % pt or H % ps or W % ps:
        raise ValueError(f"latent shape {(T, H, W)} is not divisible by the patch size (t {pt}, h/w {ps})")
    return T, H, W


def dit_tokens(model_cfg: "ModelConfig", latent_THW: tuple[int, int, int]) -> int:
    """Tokens of one forward: the latent grid cut into ``pt x ps x ps`` patches."""
    T, H, W = checked_latent(model_cfg, latent_THW)
    return (T // model_cfg.patch_temporal) * (H // model_cfg.patch_spatial) * (W // model_cfg.patch_spatial)


def num_chunks(num_frames: int, *, what: str = "input.num_frames") -> int:
    """K of a 120K + 1 frame video; otherwise an InputError naming the two nearest valid counts (spec 1.6)."""
    n = num_frames
    if isinstance(n, bool) or not isinstance(n, int) or n < CHUNK_FRAMES or (n - 1) % CHUNK_STRIDE:
        lower = max(1, (int(n) - 1) // CHUNK_STRIDE) * CHUNK_STRIDE + 1 if isinstance(n, (int, float)) else CHUNK_FRAMES
        raise InputError(f"{what}={n!r} is not 120K+1; the nearest valid counts are {lower} and {lower + CHUNK_STRIDE}")
    return (n - 1) // CHUNK_STRIDE


def chunk_frames(chunk_index: int) -> slice:
    """Global frames of chunk k: [120k, 120k + 120], inclusive; chunks overlap by one frame (spec 1.6)."""
    first = chunk_index * CHUNK_STRIDE
    return slice(first, first + CHUNK_FRAMES)
