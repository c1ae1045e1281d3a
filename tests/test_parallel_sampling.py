"""A whole multi-step sampling run under cfg parallelism equals the serial run (lead's ``sample`` loop).

The replica lead alone builds the conditioning and broadcasts it with ``broadcast_tensors`` (shape spec, no
pickling), as the runner does; every rank then runs the sampler with the cfg-parallel guided function.
"""

from __future__ import annotations

import dataclasses
import functools
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from gen3c_dist.config import ParallelConfig
from gen3c_dist.model.inputs import DiTInputs
from gen3c_dist.model.weights import random_dit
from gen3c_dist.parallel import CommCounter, attach_process_groups, broadcast_tensors, make_cp_forward, plan_layout, spec_of
from gen3c_dist.parallel.broadcast import broadcast_int
from gen3c_dist.parallel.cfg_parallel import CfgExchange
from gen3c_dist.sampling import edm
from gen3c_dist.sampling.guidance import guided_fn
from gen3c_dist.sampling.loop import FrameCondition, augment_noise, sample
from tests.dist_utils import relative_error, run_distributed, tiny_inputs, tiny_model_config

GUIDANCE = 1.5
STEPS = 4
TOLERANCE = 1e-5


pytestmark = pytest.mark.usefixtures("single_thread")


@functools.lru_cache(maxsize=None)
def _model() -> torch.nn.Module:
    return random_dit(tiny_model_config(4), seed=0)


def _conditioning() -> dict[str, torch.Tensor]:
    case = tiny_inputs(_model().cfg, seed=3)
    gt = torch.randn(case["x"].shape, generator=torch.Generator().manual_seed(4))
    return {
        "noise": case["x"] * edm.init_noise_sigma(),
        "gt": gt,
        "text_cond": case["cond"]["crossattn_emb_BLcCt"],
        "text_uncond": case["uncond"]["crossattn_emb_BLcCt"],
        "pose": case["cond"]["condition_video_pose_BCTHW"],
        "input_mask": case["cond"]["condition_video_input_mask_B1THW"],
        "padding_mask": case["cond"]["padding_mask_B1HW"],
    }


def _run_sampler(split: Any, forward_fn: Any, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    def inputs(text: torch.Tensor, pose: torch.Tensor) -> DiTInputs:
        return DiTInputs(text, tensors["input_mask"], pose, tensors["padding_mask"], 24.0)

    guided = guided_fn(forward_fn, cond=inputs(tensors["text_cond"], tensors["pose"]),
                       uncond=inputs(tensors["text_uncond"], torch.zeros_like(tensors["pose"])), guidance=GUIDANCE,
                       split=split)
    noise = augment_noise(tuple(tensors["gt"].shape), 5)
    condition = FrameCondition(gt_latent_BCTHW=tensors["gt"], augment_noise_BCTHW=noise)
    with torch.inference_mode():
        return sample(guided, x_init=tensors["noise"], sigmas=edm.karras_sigmas(STEPS), condition=condition)


def sampling_rank(env: Any, layouts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rank body: one whole sampling run per layout (processes start once per world size)."""
    results = []
    for parallel in layouts:
        layout = plan_layout(ParallelConfig(**parallel), world_size=env.world_size, rank=env.rank,
                             num_heads=_model().cfg.num_heads, guidance_runs_both=True)
        layout = attach_process_groups(layout, timeout_s=env.timeout_s)
        spec = spec_of(_conditioning())  # known shapes; followers never see the lead's tensors before the broadcast
        source = _conditioning() if layout.is_replica_lead else None
        tensors = broadcast_tensors(source, spec, group=layout.groups.replica, src=layout.replica_lead, device=env.device)
        counter = CommCounter()

        latent = _run_sampler(CfgExchange(layout, counter=counter), make_cp_forward(_model(), layout, counter=counter),
                              tensors)
        results.append({"latent": latent, "steps": len(counter.steps), "cfg_bytes": counter.steps[0]["cfg_exchange"]})
    results.append(_broadcast_other_dtypes(env, layout))
    return results


def _broadcast_other_dtypes(env: Any, layout: Any) -> dict[str, Any]:
    """bool and int64 tensors and a plain int, from the replica lead, as the runner shares small decisions."""
    source = {"flags": torch.tensor([True, False, True]), "ids": torch.arange(5) * 7}
    spec = spec_of(source)
    lead = layout.is_replica_lead
    got = broadcast_tensors(source if lead else None, spec, group=layout.groups.replica, src=layout.replica_lead,
                            device=env.device)
    number = broadcast_int(41 if lead else None, group=layout.groups.replica, src=layout.replica_lead, device=env.device)
    return {"tensors": got, "int": number, "expected": source}


LAYOUTS = {2: [{"cfg": 2}], 4: [{"cfg": 2, "ulysses": 2}, {"cfg": 2, "ring": 2}]}


@pytest.mark.parametrize("world_size", sorted(LAYOUTS))
def test_cfg_parallel_sampling_equals_serial(world_size: int) -> None:
    serial = _run_sampler(None, _model(), _conditioning())
    for rank, result in enumerate(run_distributed(sampling_rank, world_size, args=(LAYOUTS[world_size],))):
        *runs, shared = result.unwrap()
        assert shared["int"] == 41
        for name, tensor in shared["expected"].items():
            assert torch.equal(shared["tensors"][name], tensor) and shared["tensors"][name].dtype == tensor.dtype
        for parallel, got in zip(LAYOUTS[world_size], runs):
            error = relative_error(got["latent"], serial)
            assert error <= TOLERANCE, f"{parallel}: rank {rank} latent differs from the serial run by {error:.2e}"
            assert got["steps"] == STEPS
            assert got["cfg_bytes"] == serial.numel() * 4  # one fp32 output sent to the cfg peer per step


def test_skip_uncond_policy_cannot_be_cfg_parallel() -> None:
    inputs = DiTInputs(torch.zeros(1), torch.zeros(1), torch.zeros(1), torch.zeros(1), 24.0)
    split = SimpleNamespace(index=0, exchange=None, end_step=None)
    with pytest.raises(ValueError, match="skips the uncond pass at guidance 1"):
        guided_fn(_model(), cond=inputs, uncond=inputs, guidance=1.0, policy="nonofficial_skip_uncond_at_guidance_1",
                  split=split)


def test_skip_uncond_policy_runs_one_pass_and_official_guidance_one_runs_both() -> None:
    calls: list[torch.Tensor] = []

    def forward(x, t, text, **keywords):
        calls.append(text)
        return x * text.sum()

    cond = DiTInputs(torch.ones(1), torch.zeros(1), torch.zeros(1), torch.zeros(1), 24.0)
    uncond = dataclasses.replace(cond, crossattn_emb_BLcCt=torch.full((1,), 3.0))
    x = torch.full((2,), 2.0)
    skip = guided_fn(forward, cond=cond, uncond=uncond, guidance=1.0, policy="nonofficial_skip_uncond_at_guidance_1")
    assert torch.equal(skip(x, torch.tensor([0.5])), x * 1.0) and len(calls) == 1
    official = guided_fn(forward, cond=cond, uncond=uncond, guidance=1.0)
    assert torch.equal(official(x, torch.tensor([0.5])), 2 * x - 3 * x) and len(calls) == 3  # F = 2 Fc - Fu


def test_broadcast_source_must_match_the_spec() -> None:
    spec = {"a": ((2, 3), torch.float32)}
    with pytest.raises(ValueError, match=r"a: \(3, 2\) torch.float32 vs spec \(2, 3\) torch.float32"):
        broadcast_tensors({"a": torch.zeros(3, 2)}, spec, group=None, src=0, device=torch.device("cpu"))
