"""Every layout that fits world sizes 1-4 gives the single-process DiT output (fp32, 1e-5 relative).

The token count (175) is divisible by no CP degree, and the 3- and 6-head models exercise the head-count
fallback. Each world size starts its processes once and loops over its layouts inside. The same runs also check
the communication counter against the layout formula and the padded-key invariance of the attention ops.
"""

from __future__ import annotations

import functools
from typing import Any

import pytest
import torch

from gen3c_dist.model.inputs import DiTInputs

from gen3c_dist.config import DistributedConfig, ParallelConfig
from gen3c_dist.model.attention import local_attention
from gen3c_dist.model.weights import random_dit
from gen3c_dist.parallel import (
    CommCounter,
    attach_process_groups,
    guided_output,
    init_distributed,
    make_cp_forward,
    plan_layout,
)
from gen3c_dist.parallel.comm_counter import expected_bytes_per_step
from gen3c_dist.parallel.hybrid import HybridAttention
from gen3c_dist.parallel.sharding import TokenShard, gather_tokens, shard_positions, shard_tokens
from tests.dist_utils import TINY_LATENT_THW, relative_error, run_distributed, tiny_inputs, tiny_model_config

GUIDANCE = 1.0  # official default: F = 2 Fc - Fu, both passes run
TOLERANCE = 1e-5

# (name, num_heads, ParallelConfig kwargs, expected effective (ulysses, ring))
LAYOUTS: dict[int, list[tuple[str, int, dict[str, Any], tuple[int, int]]]] = {
    2: [
        ("ulysses2", 4, {"ulysses": 2}, (2, 1)),
        ("ring2", 4, {"ring": 2, "attention": "ring"}, (1, 2)),
        ("ulysses2_3heads", 3, {"ulysses": 2}, (1, 2)),
        ("cfg2", 4, {"cfg": 2}, (1, 1)),
        ("deepspeed2", 4, {"ulysses": 2, "attention": "deepspeed"}, (2, 1)),
    ],
    3: [
        ("ulysses3_3heads", 3, {"ulysses": 3}, (3, 1)),
        ("ring3", 4, {"ring": 3}, (1, 3)),
        ("ulysses3_4heads", 4, {"ulysses": 3}, (1, 3)),
        ("data3", 4, {}, (1, 1)),
    ],
    4: [
        ("ulysses4", 4, {"ulysses": 4}, (4, 1)),
        ("ring4", 4, {"ring": 4}, (1, 4)),
        ("hybrid2x2", 4, {"ulysses": 2, "ring": 2}, (2, 2)),
        ("cfg2_ulysses2", 4, {"cfg": 2, "ulysses": 2}, (2, 1)),
        ("cfg2_ring2", 4, {"cfg": 2, "ring": 2}, (1, 2)),
        ("ulysses4_6heads", 6, {"ulysses": 4}, (2, 2)),
        ("ulysses2_3heads_ring2", 3, {"ulysses": 2, "ring": 2}, (1, 4)),
        ("data2_ulysses2", 4, {"ulysses": 2, "data": 2}, (2, 1)),
    ],
}


pytestmark = pytest.mark.usefixtures("single_thread")


@functools.lru_cache(maxsize=None)
def _model(num_heads: int) -> torch.nn.Module:
    return random_dit(tiny_model_config(num_heads), seed=0)


def _layout(env: Any, parallel: dict[str, Any], num_heads: int):
    layout = plan_layout(
        ParallelConfig(**parallel), world_size=env.world_size, rank=env.rank, num_heads=num_heads, guidance_runs_both=True
    )
    return attach_process_groups(layout, timeout_s=env.timeout_s)


def run_layouts(env: Any, world_size: int) -> dict[str, dict[str, Any]]:
    """Rank body: one guided step per layout, with the comm counter on."""
    results = {}
    for name, heads, parallel, _ in LAYOUTS[world_size]:
        layout = _layout(env, parallel, heads)
        counter = CommCounter()
        forward_fn = make_cp_forward(_model(heads), layout, counter=counter)
        case = tiny_inputs(_model(heads).cfg)
        with torch.inference_mode():
            guided = guided_output(
                forward_fn, layout, case["x"], case["timestep"], DiTInputs(**case["cond"]), DiTInputs(**case["uncond"]),
                GUIDANCE, counter=counter
            )
        results[name] = {"guided": guided, "steps": counter.steps, "degrees": (layout.ulysses, layout.ring)}
    results["padding"] = padded_attention(env) if world_size == 4 else {}
    return results


def padded_attention(env: Any) -> dict[str, torch.Tensor]:
    """Attention over 5 real tokens on 4 ranks (shard 3 is all padding) with garbage in the padded slots."""
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(1, 5, 4, 8, generator=g) for _ in range(3))
    out = {}
    layouts = {"ulysses4": {"ulysses": 4}, "ring4": {"ring": 4}, "hybrid2x2": {"ulysses": 2, "ring": 2}}
    for name, parallel in layouts.items():
        layout = _layout(env, parallel, 4)
        shard = TokenShard(tokens=5, degree=4, index=layout.cp_index)
        local = [shard_tokens(t, shard).clone() for t in (q, k, v)]
        real = shard.valid_keys(start=shard.start, length=shard.per_rank)
        for t in local:  # padding must not matter, whatever it holds
            t[:, real:] = 1e3 * torch.randn(t[:, real:].shape, generator=torch.Generator().manual_seed(env.rank))
        o_local = HybridAttention(layout, shard, counter=None)(*local)
        out[name] = gather_tokens(o_local, shard, group=layout.groups.cp, counter=None)
    out["reference"] = local_attention(q, k, v)
    return out


@functools.lru_cache(maxsize=None)
def serial_reference(num_heads: int) -> torch.Tensor:
    model, case = _model(num_heads), tiny_inputs(_model(num_heads).cfg)
    with torch.inference_mode():
        cond_F = model(case["x"], case["timestep"], **case["cond"])
        uncond_F = model(case["x"], case["timestep"], **case["uncond"])
    return cond_F + GUIDANCE * (cond_F - uncond_F)


def test_world_size_1_plain_python_equals_model_forward() -> None:
    env = init_distributed(DistributedConfig(backend="gloo"), environ={})
    assert env.world_size == 1 and not env.distributed
    layout = _layout(env, {}, 4)
    case = tiny_inputs(_model(4).cfg)
    counter = CommCounter()
    with torch.inference_mode():
        guided = guided_output(
            make_cp_forward(_model(4), layout), layout, case["x"], case["timestep"], DiTInputs(**case["cond"]),
            DiTInputs(**case["uncond"]),
            GUIDANCE, counter=counter,
        )
    torch.testing.assert_close(guided, serial_reference(4), rtol=0, atol=0)
    assert counter.steps == [{}]


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_every_layout_matches_single_process(world_size: int) -> None:
    ranks = [r.unwrap() for r in run_distributed(run_layouts, world_size, args=(world_size,))]
    T, H, W = TINY_LATENT_THW
    for name, heads, _, degrees in LAYOUTS[world_size]:
        reference = serial_reference(heads)
        for rank, result in enumerate(ranks):
            got = result[name]
            assert got["degrees"] == degrees, f"{name}: effective (ulysses, ring) on rank {rank}"
            error = relative_error(got["guided"], reference)
            assert error <= TOLERANCE, f"{name}: rank {rank} differs from one process by {error:.2e}"
            layout = plan_layout(ParallelConfig(**_config(name, world_size)), world_size=world_size, rank=rank,
                                 num_heads=heads, guidance_runs_both=True)
            expected = expected_bytes_per_step(layout, model_cfg=_model(heads).cfg, latent_BCTHW=(1, 16, T, H, W),
                                               element_size=4)
            assert got["steps"] == [expected], f"{name}: rank {rank} comm bytes"
    if world_size == 4:
        for rank, result in enumerate(ranks):
            padding = result["padding"]
            for name in ("ulysses4", "ring4", "hybrid2x2"):
                error = relative_error(padding[name], padding["reference"])
                assert error <= TOLERANCE, f"padded {name} on rank {rank} differs by {error:.2e}"


def test_shard_positions_are_the_rows_of_the_whole_tables() -> None:
    """A rank builds only its own rows; they equal the whole tables' rows bit for bit, and padding is inert."""
    model = _model(4)
    for grid_THW, degrees in ((model.patch_grid(TINY_LATENT_THW), (2, 3, 4)), ((1, 1, 5), (4,))):  # 175 and 5 tokens
        full = model.token_positions(grid_THW, fps=24.0)
        tokens = full.pos_emb_LD.shape[0]
        for degree in degrees:
            for index in range(degree):
                shard = TokenShard(tokens=tokens, degree=degree, index=index)
                own = shard_positions(model, grid_THW, fps=24.0, shard=shard, device=torch.device("cpu"))
                real = shard.valid_keys(start=shard.start, length=shard.per_rank)
                assert own.grid_THW == grid_THW
                for name, pad in (("rope_cos_LD", 1.0), ("rope_sin_LD", 0.0), ("pos_emb_LD", 0.0)):
                    table = getattr(own, name)
                    assert table.shape[0] == shard.per_rank, (name, degree, index)
                    assert torch.equal(table[:real], getattr(full, name)[shard.start : shard.start + real]), name
                    assert torch.all(table[real:] == pad), (name, degree, index)  # cos 1, sin 0: no rotation
    assert TokenShard(tokens=5, degree=4, index=3).valid_keys(start=6, length=2) == 0  # 5 on 4 ranks: one all padding


def _config(name: str, world_size: int) -> dict[str, Any]:
    return next(parallel for n, _, parallel, _ in LAYOUTS[world_size] if n == name)


def test_comm_formula_hand_numbers() -> None:
    """The formula itself, for Ulysses 4 and ring 4 on the tiny model (175 tokens -> 44 per rank, D = 128)."""
    T, H, W = TINY_LATENT_THW
    model_cfg = _model(4).cfg
    for parallel, expected in (
        # 2 forwards x 2 blocks x 4 (QKV + out) x 44 tokens x 128 x 4 B x 3/4 ; gather 2 x 44 x 64 x 4 B x 3
        ({"ulysses": 4}, {"all_to_all": 2 * 2 * 4 * 44 * 128 * 4 * 3 // 4, "gather_output": 2 * 44 * 64 * 4 * 3}),
        # 2 forwards x 2 blocks x 3 ring steps x (K + V) x 44 x 128 x 4 B
        ({"ring": 4}, {"ring_p2p": 2 * 2 * 3 * 2 * 44 * 128 * 4, "gather_output": 2 * 44 * 64 * 4 * 3}),
    ):
        layout = plan_layout(ParallelConfig(**parallel), world_size=4, rank=0, num_heads=4, guidance_runs_both=True)
        got = expected_bytes_per_step(layout, model_cfg=model_cfg, latent_BCTHW=(1, 16, T, H, W), element_size=4)
        assert got == expected
