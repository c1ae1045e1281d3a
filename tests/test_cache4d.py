"""Cache4D (gen3c_dist.geometry.cache4d): per-frame sources, chunk slicing, foreground masking for any chunk."""

from __future__ import annotations

import functools

import pytest
import torch

from gen3c_dist.geometry.camera import generate_video_trajectory
from gen3c_dist.geometry.cache4d import Cache4D
from tests.video_utils import small_video_tensors

T, H, W = 9, 48, 64  # large enough that the 5x5 depth-edge filter keeps most points


@functools.lru_cache(maxsize=None)
def _video() -> dict[str, torch.Tensor]:
    return small_video_tensors(T, H, W)


def _cache(v: dict[str, torch.Tensor], **kwargs) -> Cache4D:
    return Cache4D(v["frames"], v["depth"], v["mask"], v["w2c"], v["K"], **kwargs)


def _targets() -> tuple[torch.Tensor, torch.Tensor]:
    v = _video()
    w2cs, Ks = generate_video_trajectory("clockwise", camera_rotation="center_facing", movement_distance=0.2,
                                         center_depth=1.0, source_w2c_N44=v["w2c"], source_K_N33=v["K"])
    return w2cs[None], Ks[None]


@pytest.mark.parametrize("start, frames", [(0, 5), (4, 5), (3, 3)])
def test_foreground_masking_works_for_any_chunk_and_equals_the_sliced_video(start: int, frames: int) -> None:
    """The official code only runs T == F, s == 0; any other chunk must equal a cache of just its frames."""
    v = _video()
    w2cs, Ks = _targets()
    chunk = slice(start, start + frames)
    cache = _cache(v, filter_points_threshold=0.05, foreground_masking=True)
    images, masks = cache.render(w2cs[:, chunk], Ks[:, chunk], start_frame_idx=start)
    sliced = _cache({k: t[chunk] for k, t in v.items()}, filter_points_threshold=0.05, foreground_masking=True)
    want_images, want_masks = sliced.render(w2cs[:, chunk], Ks[:, chunk])
    assert torch.equal(images, want_images) and torch.equal(masks, want_masks)
    assert images.shape == (1, frames, 1, 3, H, W) and 0.15 < float(masks.mean()) < 1.0
    # Foreground masking removed something, so the boundary really took part.
    plain = _cache(v, filter_points_threshold=0.05).render(w2cs[:, chunk], Ks[:, chunk], start_frame_idx=start)
    assert float(plain[1].sum()) > float(masks.sum())


def test_target_frame_i_warps_source_frame_s_plus_i_only() -> None:
    v = _video()
    w2cs, Ks = _targets()
    base, _ = _cache(v).render(w2cs[:, 2:6], Ks[:, 2:6], start_frame_idx=2)
    recoloured = dict(v, frames=v["frames"].clone())
    recoloured["frames"][3] = -recoloured["frames"][3]  # source frame 3 = target frame 1 of this chunk
    changed, _ = _cache(recoloured).render(w2cs[:, 2:6], Ks[:, 2:6], start_frame_idx=2)
    differs = [not torch.equal(base[0, i], changed[0, i]) for i in range(4)]
    assert differs == [False, True, False, False]


def test_float64_cameras_give_the_float32_render() -> None:
    v = _video()
    w2cs, Ks = _targets()
    want = _cache(v).render(w2cs[:, :4], Ks[:, :4])
    got = _cache(dict(v, w2c=v["w2c"].double(), K=v["K"].double())).render(w2cs[:, :4].double(), Ks[:, :4].double())
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_render_depth_is_the_splatted_z() -> None:
    v = _video()
    cache = _cache(v, filter_points_threshold=0.05)
    depth, masks = cache.render_depth(v["w2c"][None, 2:4], v["K"][None, 2:4], start_frame_idx=2)
    on = cache.masks[2:4, 0]
    assert depth.shape == (1, 2, 1, H, W) and bool((masks[0, :, 0, 0][on] == 1).all())
    torch.testing.assert_close(depth[0, :, 0][on], v["depth"][2:4, 0][on], rtol=1e-4, atol=0)


def test_bad_input_raises_value_error() -> None:
    v = _video()
    w2cs, Ks = _targets()
    cache = _cache(v)
    with pytest.raises(ValueError, match=r"needs source frames \[6, 10\), but the video has 9"):
        cache.render(w2cs[:, :4], Ks[:, :4], start_frame_idx=6)
    with pytest.raises(ValueError, match="start_frame_idx: must be an integer >= 0"):
        cache.render(w2cs[:, :4], Ks[:, :4], start_frame_idx=-1)
    with pytest.raises(ValueError, match="Ks: expected shape"):
        cache.render(w2cs[:, :4], Ks[:, :3])
    with pytest.raises(ValueError, match=r"depth: expected shape \[9, 1, 48, 64\]"):
        _cache(dict(v, depth=v["depth"][:-1]))
    with pytest.raises(ValueError, match="mask: values must be 0 or 1"):
        _cache(dict(v, mask=v["mask"] * 0.5))
    with pytest.raises(ValueError, match="images_per_warp"):
        _cache(v, images_per_warp=3)
