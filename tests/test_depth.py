"""MoGe v1 wrapper (gen3c_dist.conditioning.depth): loading, official post-processing, tiny random model."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may reach the hub

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

cv2 = pytest.importorskip("cv2")
moge_v1 = pytest.importorskip("moge.model.v1")
from PIL import Image  # noqa: E402

from gen3c_dist.conditioning import depth as depth_mod  # noqa: E402
from gen3c_dist.errors import InputError  # noqa: E402
from gen3c_dist.conditioning.depth import (  # noqa: E402
    MASKED_DEPTH,
    MAX_DEPTH,
    estimate_frame_depth,
    estimate_input_image_depth,
    load_moge,
    moge_input_size,
    postprocess_frame_depth,
    resolve_moge_path,
)

from gen3c_dist.runner.models import TINY_MOGE_CONFIG  # noqa: E402  (moge-vitl's config, the ViT-S backbone)

NUM_TOKENS = 64  # MoGe resizes every input to ~num_tokens * 14^2 pixels: keep the backbone cheap


@pytest.fixture(scope="module")
def tiny_moge() -> torch.nn.Module:
    torch.manual_seed(0)
    model = moge_v1.MoGeModel(**TINY_MOGE_CONFIG).eval()
    with torch.no_grad():  # mask logits > 0.5 everywhere, so the random depth is a real (masked-in) estimate
        model.head.output_block[1][-1].bias.fill_(10.0)
    return model


@pytest.fixture()
def no_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the hub must never be contacted")

    monkeypatch.setattr(moge_v1, "hf_hub_download", refuse)


def test_moge_input_size_generalises_the_official_720p() -> None:
    assert moge_input_size(704, 1280) == (720, 1280)
    assert moge_input_size(64, 96) == (65, 96)  # 64 * 720 / 704 = 65.45
    assert moge_input_size(352, 640) == (360, 640)


def _fake_infer(record: dict, depth_hw: torch.Tensor, mask_hw: torch.Tensor, k_norm_33: torch.Tensor):
    def infer(image: torch.Tensor, num_tokens: int | None = None, use_fp16: bool = True) -> dict:
        record.update(image=image.clone(), num_tokens=num_tokens, use_fp16=use_fp16)
        return {"depth": depth_hw.clone(), "mask": mask_hw.clone(), "intrinsics": k_norm_33.clone()}

    return infer


def test_input_path_post_processing_official_size(tiny_moge, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hand-made MoGe output at 720x1280 -> the official 704x1280 target (spec section 7.1)."""
    depth_hw = torch.full((720, 1280), 2.0)
    mask_hw = torch.ones(720, 1280, dtype=torch.bool)
    mask_hw[:360] = False  # top half: sky, MoGe gives +inf there
    depth_hw[:360] = torch.inf
    depth_hw[600, 100] = torch.nan
    depth_hw[700, 1200] = -3.0
    k_norm = torch.tensor([[0.8, 0.0, 0.5], [0.0, 1.4, 0.5], [0.0, 0.0, 1.0]])
    record: dict = {}
    monkeypatch.setattr(tiny_moge, "infer", _fake_infer(record, depth_hw, mask_hw, k_norm))
    rgb = np.zeros((720, 1280, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 255, 51, 0
    est = estimate_input_image_depth(tiny_moge, rgb, 704, 1280, num_tokens=NUM_TOKENS)

    assert record["image"].shape == (3, 720, 1280) and record["num_tokens"] == NUM_TOKENS
    assert record["use_fp16"] is False  # fp16 autocast on CPU is ~20x slower
    torch.testing.assert_close(record["image"][:, 0, 0], torch.tensor([1.0, 0.2, 0.0]))
    assert est.image.shape == (1, 3, 704, 1280)
    torch.testing.assert_close(est.image[0, :, 5, 5], torch.tensor([1.0, -0.6, -1.0]))
    torch.testing.assert_close(est.w2c, torch.eye(4)[None])
    expected_k = torch.tensor([[0.8 * 1280, 0.0, 640.0], [0.0, 1.4 * 704, 352.0], [0.0, 0.0, 1.0]])[None]
    torch.testing.assert_close(est.intrinsics, expected_k)

    depth, mask = est.depth[0, 0], est.mask[0, 0]
    assert est.depth.shape == est.mask.shape == (1, 1, 704, 1280) and est.mask.dtype == torch.bool
    assert not mask[:352].any() and mask[352:].all()  # nearest: source row floor(i * 720 / 704)
    assert (depth[:340] == MASKED_DEPTH).all()  # masked sky -> 1000 (before the resize, so no inf leaks)
    assert (depth[360:580] == 2.0).all()
    boundary = depth[348:356, 0]
    assert (boundary > 2.0).any() and (boundary < MASKED_DEPTH).any()  # bilinear blend of 1000 and 2
    assert depth[587, 100] == MAX_DEPTH  # NaN -> 1e4 after the resize
    assert depth[684, 1200] == 0.0  # negative -> clamp 0


def test_frame_post_processing_order() -> None:
    """nan -> 1e4, clamp [0, 1e4], then masked -> 1000 (spec section 1.6 step 2)."""
    depth_hw = torch.tensor([[torch.nan, torch.inf, -1.0], [5.0, 2e4, torch.nan]])
    mask_hw = torch.tensor([[True, True, True], [True, True, False]])
    depth, mask = postprocess_frame_depth(depth_hw, mask_hw)
    assert depth.shape == mask.shape == (1, 1, 2, 3)
    torch.testing.assert_close(depth[0, 0], torch.tensor([[1e4, 1e4, 0.0], [5.0, 1e4, 1000.0]]))
    assert torch.equal(mask[0, 0], mask_hw)


def test_frame_path_runs_moge_at_frame_size(tiny_moge, monkeypatch: pytest.MonkeyPatch) -> None:
    record: dict = {}
    k = torch.eye(3) * 123.0  # must be discarded
    fake = _fake_infer(record, torch.full((40, 56), 3.0), torch.ones(40, 56, dtype=torch.bool), k)
    monkeypatch.setattr(tiny_moge, "infer", fake)
    frame = torch.rand(3, 40, 56)
    depth, mask = estimate_frame_depth(tiny_moge, frame, num_tokens=NUM_TOKENS)
    assert torch.equal(record["image"], frame)  # no resize before MoGe
    assert depth.shape == (1, 1, 40, 56) and (depth == 3.0).all() and mask.all()
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        estimate_frame_depth(tiny_moge, frame[None])


def test_tiny_random_moge_on_a_png(tiny_moge, tmp_path: Path) -> None:
    rgb = np.random.default_rng(1).integers(0, 256, size=(120, 160, 3), dtype=np.uint8)
    path = tmp_path / "in.png"
    Image.fromarray(rgb).save(path)
    est = estimate_input_image_depth(tiny_moge, str(path), 64, 96, num_tokens=NUM_TOKENS)
    assert est.image.shape == (1, 3, 64, 96) and est.image.min() >= -1 and est.image.max() <= 1
    assert est.depth.shape == est.mask.shape == (1, 1, 64, 96)
    assert est.mask.all()  # the mask bias makes every pixel valid
    assert torch.isfinite(est.depth).all() and (est.depth > 0).all() and (est.depth < MASKED_DEPTH).all()
    k = est.intrinsics[0]
    # MoGe's principal point is the centre: cx = 0.5 * 96, cy = 0.5 * 65 * (64 / 65)
    torch.testing.assert_close(k[:, 2], torch.tensor([48.0, 32.0, 1.0]))
    assert torch.isfinite(k).all() and k[0, 1] == 0  # random weights: the focal's sign is arbitrary
    # the cache image follows the official chain: cv2 resize to 96x65, then bilinear to 64x96
    ref = cv2.resize(rgb, (96, 65), interpolation=cv2.INTER_LINEAR) / 255.0
    ref_t = torch.tensor(ref, dtype=torch.float32).permute(2, 0, 1)[None]
    torch.testing.assert_close(est.image, F.interpolate(ref_t, size=(64, 96), mode="bilinear") * 2 - 1)


def test_local_checkpoint_round_trip(tiny_moge, tmp_path: Path, no_hub: None) -> None:
    torch.save({"model_config": TINY_MOGE_CONFIG, "model": tiny_moge.state_dict()}, tmp_path / "model.pt")
    assert resolve_moge_path(str(tmp_path)) == resolve_moge_path(str(tmp_path / "model.pt"))  # folder or file
    loaded = load_moge(str(tmp_path))
    assert isinstance(loaded, moge_v1.MoGeModel) and not loaded.training
    expected = tiny_moge.state_dict()
    got = loaded.state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[name], expected[name]) for name in expected)  # same weights -> same depth


@pytest.mark.parametrize("path", [None, "/nonexistent/moge/model.pt"])
def test_missing_weights_say_how_to_get_them(path: str | None, no_hub: None) -> None:
    with pytest.raises(ValueError) as info:
        load_moge(path)
    text = str(info.value)
    assert "Ruicheng/moge-vitl" in text and "model.pt" in text and "checkpoints.moge=" in text


def test_wrong_checkpoint_formats(tmp_path: Path, no_hub: None) -> None:
    torch.save({"state_dict": {}}, tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="'model_config' and 'model'"):
        load_moge(str(tmp_path / "plain.pt"))
    torch.save({"model_config": {"encoder": {"backbone": "dinov2_vitl14"}, "points_head": {}}, "model": {}},
               tmp_path / "v2.pt")
    with pytest.raises(ValueError, match="v2"):
        load_moge(str(tmp_path / "v2.pt"))


class NotAllowedInCheckpoints:
    """Any custom class needs pickle to load, which weights_only=True refuses."""


def test_checkpoints_load_without_pickle(tmp_path: Path) -> None:
    checkpoint = {"model_config": TINY_MOGE_CONFIG, "model": {}, "extra": NotAllowedInCheckpoints()}
    torch.save(checkpoint, tmp_path / "evil.pt")
    with pytest.raises(InputError, match=r"evil\.pt: holds pickled Python objects besides tensors \(.*"
                                         r"NotAllowedInCheckpoints\); the loader never unpickles them") as err:
        load_moge(str(tmp_path / "evil.pt"))
    assert "weights_only" not in str(err.value)


def test_depth_module_imports_moge_lazily() -> None:
    assert "MoGeModel" not in vars(depth_mod)
