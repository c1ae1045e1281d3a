"""gen3c_dist.perf.flops: the analytic FLOP count equals torch's FlopCounterMode exactly.

Accounting note: on the CPU, F.scaled_dot_product_attention dispatches to
``aten._scaled_dot_product_flash_attention_for_cpu``, which FlopCounterMode has no formula for (it counts 0).
Forcing the MATH backend decomposes SDPA into the two ``bmm`` calls it is made of, which FlopCounterMode
counts; on the meta device SDPA decomposes the same way by itself. With that, ``mm`` must equal the analytic
``linear`` part and ``bmm`` the ``attention`` part, to the FLOP.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from gen3c_dist.config import model_preset
from gen3c_dist.model.dit import GEN3CDiT
from gen3c_dist.model.weights import random_dit
from gen3c_dist.perf.flops import dit_forward_flops, dit_tokens, latent_thw, step_flops

# The 7B forward at 121 x 704 x 1280 (latent 16 x 88 x 160, 56,320 tokens); cp_anchors.md section 3 derives
# ~2,209 TFLOP = 740.8 (block GEMMs) + 1,455.1 (self-attention core) + 13.2 (cross core) + the small layers.
GEN3C_7B_FORWARD_FLOPS = 2_209_581_600_079_872


def _counted(model: torch.nn.Module, latent_THW: tuple, *, batch: int, device: str = "cpu") -> dict[str, int]:
    cfg = model.cfg
    T, H, W = latent_THW
    g = torch.Generator().manual_seed(0)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) if device == "cpu" else torch.empty(*shape, device=device)

    pose_channels = 32 * cfg.frame_buffer_max
    with torch.inference_mode(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(
            rand(batch, 16, T, H, W), rand(batch).abs(), rand(batch, 512, cfg.crossattn_emb_channels),
            condition_video_input_mask_B1THW=rand(batch, 1, T, H, W),
            condition_video_pose_BCTHW=rand(batch, pose_channels, T, H, W),
            padding_mask_B1HW=rand(batch, 1, H, W),
        )
    return {str(op).split(".")[-1]: n for op, n in counter.get_flop_counts()["Global"].items()} | {
        "total": counter.get_total_flops()}


@pytest.mark.parametrize("latent_THW, batch", [((2, 4, 6), 1), ((3, 6, 4), 2)])
def test_tiny_forward_matches_flop_counter_exactly(latent_THW, batch):
    model = random_dit(model_preset("tiny"), seed=0)
    counted = _counted(model, latent_THW, batch=batch)
    expected = dit_forward_flops(model.cfg, latent_THW, batch=batch)
    assert counted["mm"] == expected.linear
    assert counted["bmm"] == expected.attention
    assert counted["total"] == expected.total


def test_7b_forward_on_meta_device_matches_counter_and_anchor():
    cfg = model_preset("gen3c_cosmos_7b")
    with torch.device("meta"):
        model = GEN3CDiT(cfg)
    latent = latent_thw(704, 1280)
    assert latent == (16, 88, 160) and dit_tokens(cfg, latent) == 56_320
    expected = dit_forward_flops(cfg, latent)
    assert _counted(model, latent, batch=1, device="meta")["total"] == expected.total == GEN3C_7B_FORWARD_FLOPS
    assert expected.total == pytest.approx(2.209e15, rel=1e-3)
    assert expected.self_attn_core == 28 * 4 * 56_320**2 * 4096  # 4 S^2 D per block
    assert expected.self_attn_proj + expected.mlp + expected.cross_attn_proj - 28 * 2 * 2 * 512 * 1024 * 4096 == (
        28 * 28 * 56_320 * 4096**2)  # 14 D^2 MACs per token and block, plus the text K/V projections
    assert step_flops(cfg, latent) == 2 * GEN3C_7B_FORWARD_FLOPS


def test_bad_shapes_raise():
    cfg = model_preset("tiny")
    with pytest.raises(ValueError, match="not divisible by the patch size"):
        dit_forward_flops(cfg, (2, 5, 6))
    with pytest.raises(ValueError, match="multiples of 16"):
        latent_thw(100, 96)
    with pytest.raises(ValueError, match="forwards"):
        step_flops(cfg, (2, 4, 6), forwards=3)
