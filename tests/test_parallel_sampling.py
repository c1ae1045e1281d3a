"""A whole multi-step sampling run under cfg parallelism equals the serial run (lead's ``sample`` loop).

The replica lead alone builds the conditioning and broadcasts it with ``broadcast_tensors`` (shape spec, no
pickling), as the runner does; every rank then runs the sampler with the cfg-parallel guided function.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest
import torch

from gen3c_dist.config import ParallelConfig
from gen3c_dist.model.weights import random_dit
from gen3c_dist.parallel import CommCounter, attach_process_groups, broadcast_tensors, make_cp_forward, plan_layout, spec_of
from gen3c_dist.parallel.broadcast import broadcast_int
from gen3c_dist.parallel.cfg_parallel import cfg_parallel_guided_fn
from gen3c_dist.sampling import edm
from gen3c_dist.sampling.guidance import BranchInputs, SharedInputs, serial_guided_fn
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


def _run_sampler(guided_builder: Any, forward_fn: Any, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    shared = SharedInputs(tensors["input_mask"], tensors["padding_mask"], 24.0)
    guided = guided_builder(
        forward_fn,
        cond=BranchInputs(tensors["text_cond"], tensors["pose"]),
        uncond=BranchInputs(tensors["text_uncond"], torch.zeros_like(tensors["pose"])),
        shared=shared,
        guidance=GUIDANCE,
    )
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

        def builder(forward_fn: Any, **kwargs: Any) -> Any:
            return cfg_parallel_guided_fn(forward_fn, layout=layout, counter=counter, **kwargs)

        latent = _run_sampler(builder, make_cp_forward(_model(), layout, counter=counter), tensors)
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
    serial = _run_sampler(serial_guided_fn, _model(), _conditioning())
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
    layout = plan_layout(ParallelConfig(), world_size=1, rank=0, num_heads=4, guidance_runs_both=True)
    branch = BranchInputs(torch.zeros(1), torch.zeros(1))
    shared = SharedInputs(torch.zeros(1), torch.zeros(1), 24.0)
    with pytest.raises(ValueError, match="skips the uncond pass at guidance 1"):
        cfg_parallel_guided_fn(_model(), layout=layout, cond=branch, uncond=branch, shared=shared, guidance=1.0,
                               policy="nonofficial_skip_uncond_at_guidance_1")


def test_broadcast_source_must_match_the_spec() -> None:
    spec = {"a": ((2, 3), torch.float32)}
    with pytest.raises(ValueError, match=r"a: \(3, 2\) torch.float32 vs spec \(2, 3\) torch.float32"):
        broadcast_tensors({"a": torch.zeros(3, 2)}, spec, group=None, src=0, device=torch.device("cpu"))
