"""gen3c_dist.perf.projection: step times for known cases computed by hand, the fastest mark, the 383 s check."""

from __future__ import annotations

import pytest

from gen3c_dist.config import model_preset
from gen3c_dist.perf.hardware import gpu_spec, gpu_spec_for_name
from gen3c_dist.perf.projection import (
    Settings,
    check_against_anchor,
    estimate_step,
    main,
    projection_layout,
    projection_rows,
)

LATENT = (16, 88, 160)
S, D, BLOCKS = 56_320, 4096, 28
LINEAR, ATTENTION = 741_218_180_923_392, 1_468_363_419_156_480  # exact, tests/test_perf_flops.py
SELF_ATTENTION = BLOCKS * 4 * S * S * D
LINK = 0.8  # link and HBM efficiency


def _step(name: str, world: int, gpu: str, **settings):
    cfg = model_preset("gen3c_cosmos_7b")
    layout = projection_layout(name, world, model_cfg=cfg, tokens=S, gpus_per_node=8)
    return estimate_step(cfg, LATENT, layout, gpu_spec(gpu), Settings(**settings))


def test_single_h100_sxm_by_hand():
    step = _step("single", 1, "h100_sxm")
    gemm = 2 * LINEAR / (989e12 * 0.70)
    attention = 2 * ATTENTION / (989e12 * 0.35)
    elementwise = 2 * BLOCKS * 40 * S * D * 2 / (3.35e12 * LINK)
    assert step.comm_s == {} and step.exposed_comm_s == 0
    assert step.step_s == pytest.approx(gemm + attention + elementwise, rel=1e-12)
    assert step.step_s == pytest.approx(2 * (1.0707 + 4.2417 + 0.1927), abs=2e-3)  # per forward: 5.505 s


def test_ulysses_8_on_nvlink_is_added_in_full():
    step = _step("ulysses", 8, "h100_sxm")
    local = S // 8
    all_to_all = 2 * BLOCKS * 4 * local * D * 2 * 7 // 8  # bytes per rank per step, bf16
    gather = 2 * local * 64 * 2 * 7
    nvlink = 450e9 * LINK
    assert step.comm_s["all_to_all"] == pytest.approx(all_to_all / nvlink, rel=1e-12)
    assert step.comm_s["gather_output"] == pytest.approx(gather / nvlink, rel=1e-12)
    assert step.exposed_comm_s == pytest.approx((all_to_all + gather) / nvlink, rel=1e-12)
    assert step.gemm_s == pytest.approx(2 * LINEAR / 8 / (989e12 * 0.70), rel=1e-12)


def test_ring_16_crosses_nodes_and_only_the_excess_over_attention_shows():
    step = _step("ring", 16, "h100_sxm")
    ring_bytes = 2 * BLOCKS * 2 * (S // 16) * D * 2 * 15
    ring_s = ring_bytes / (50e9 * LINK)  # ranks 7 -> 8 and 15 -> 0 cross the node boundary: InfiniBand
    self_attention_s = 2 * SELF_ATTENTION / 16 / (989e12 * 0.35)
    assert step.comm_s["ring_p2p"] == pytest.approx(ring_s, rel=1e-12)
    assert step.self_attention_s == pytest.approx(self_attention_s, rel=1e-12)
    gather = 2 * (S // 16) * 64 * 2 * 15
    gather_s = gather * 8 / 15 / (50e9 * LINK)  # 8 of the 15 peers are off-node: the IB share is the slowest
    assert step.comm_s["gather_output"] == pytest.approx(gather_s, rel=1e-12)
    assert step.exposed_comm_s == pytest.approx(ring_s - self_attention_s + gather_s, rel=1e-12)


def test_pcie_ulysses_4_is_paced_by_the_pcie_peers():
    step = _step("ulysses", 4, "h100_pcie")
    nbytes = 2 * BLOCKS * 4 * (S // 4) * D * 2 * 3 // 4
    bridge, pcie = 300e9 * LINK, 64e9 * LINK  # rank 1 shares the NVLink bridge, ranks 2 and 3 do not
    assert step.comm_s["all_to_all"] == pytest.approx(max(nbytes / 3 / bridge, 2 * nbytes / 3 / pcie), rel=1e-12)


def test_table_marks_one_fastest_layout_per_gpu_and_world_size():
    rows = projection_rows([gpu_spec("h100_sxm"), gpu_spec("a100_sxm")], settings=Settings())
    keys = {(r["gpu"], r["world_size"]) for r in rows}
    assert len(keys) == 2 * 7
    for key in keys:
        group = [r for r in rows if (r["gpu"], r["world_size"]) == key]
        fastest = [r for r in group if r["fastest"]]
        assert len(fastest) == 1 and fastest[0]["clip_s"] == min(r["clip_s"] for r in group)
    layouts = {(r["layout"], r["world_size"]) for r in rows if r["gpu"] == "h100_sxm"}
    assert ("ulysses", 32) in layouts and ("ulysses", 64) not in layouts  # 32 heads
    assert ("hybrid", 2) not in layouts and ("cfg", 4) not in layouts
    assert ("cfg+hybrid", 64) in layouts
    single = next(r for r in rows if r["gpu"] == "h100_sxm" and r["world_size"] == 1)
    assert single["clip_s"] == pytest.approx(35 * _step("single", 1, "h100_sxm").step_s + 20.0, rel=1e-12)


def test_check_against_the_383_s_anchor(capsys):
    settings = Settings()
    check = check_against_anchor(settings)
    predicted = 35 * _step("single", 1, "h100_sxm").step_s + 20.0
    assert check["predicted_s"] == pytest.approx(predicted, rel=1e-12)
    assert check["error"] == pytest.approx(predicted / 383 - 1, rel=1e-12)
    assert check["dit_only_error"] == pytest.approx((predicted - 20.0) / 383 - 1, rel=1e-12)
    main(["--gpus", "h100_sxm", "h200"])
    out = capsys.readouterr().out
    assert "== H100 SXM" in out and "== H200 SXM" in out and "N=64" in out
    assert f"relative error {check['error']:+.1%}" in out
    assert "*" in out


def test_sweep_console_script_delegates_projection(capsys):
    from gen3c_dist.perf.sweep import main as sweep_main

    sweep_main(["--project", "--gpus", "a100_sxm", "--world-sizes", "1", "8"])
    out = capsys.readouterr().out
    assert "== A100 SXM" in out and "N=8" in out and "N=16" not in out and "relative error" in out


def test_gpu_names_map_to_table_entries():
    assert gpu_spec_for_name("NVIDIA H100 80GB HBM3").key == "h100_sxm"
    assert gpu_spec_for_name("NVIDIA H100 PCIe").key == "h100_pcie"
    assert gpu_spec_for_name("NVIDIA H200").key == "h200"
    assert gpu_spec_for_name("NVIDIA A100-SXM4-80GB").key == "a100_sxm"
    assert gpu_spec_for_name("NVIDIA H100 NVL") is None and gpu_spec_for_name(None) is None


def test_gen3c_non_dit_model_shares_the_tokenizer_over_the_replica():
    from gen3c_dist.perf.non_dit import NonDiTModel

    group, lead = NonDiTModel(tokenizer="group"), NonDiTModel(tokenizer="lead")
    serial = 4.0 + 3 * 3.7 + 6.3
    assert lead.seconds(1) == group.seconds(1) == pytest.approx(serial)
    assert lead.seconds(8) == pytest.approx(serial)  # the official placement does not scale
    assert group.seconds(2) == pytest.approx(4.0 + 2 * 3.7 + 6.3 / 2)  # 3 encodes on 2 ranks: 2 rounds
    assert group.seconds(8) == pytest.approx(4.0 + 3.7 + 6.3 / 8)
    assert group.seconds(64) == pytest.approx(4.0 + 3.7 + 6.3 / 16)  # 16 latent frames: at most 16 decode ranks
    with pytest.raises(ValueError, match="placement"):
        NonDiTModel(tokenizer="everywhere")


def test_projection_rows_charge_the_non_dit_model_per_replica():
    from gen3c_dist.perf.non_dit import NonDiTModel

    settings = Settings(non_dit=NonDiTModel(tokenizer="group"))
    rows = projection_rows([gpu_spec("h100_sxm")], settings=settings, world_sizes=(1, 8), layouts=("single", "ulysses"))
    by_layout = {row["layout"]: row for row in rows}
    assert by_layout["single"]["non_dit_s"] == pytest.approx(4.0 + 3 * 3.7 + 6.3)
    assert by_layout["ulysses"]["non_dit_s"] == pytest.approx(4.0 + 3.7 + 6.3 / 8)
    for row in rows:
        assert row["clip_s"] == pytest.approx(35 * row["step_s"] + row["non_dit_s"])
