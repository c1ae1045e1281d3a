"""Tokenizer work spread over a group (gloo, 1-3 processes) equals the single-process tokenizer.

Encodes run whole on one rank each, so they must be bit-identical; the sequence-parallel decode splits every op
along time and must agree to fp32 rounding (1e-5 of the output's peak: random weights reach |x| ~ 30, where one
float32 decode is itself ~2e-5 from a float64 one), its uint8 frames up to rare truncation flips of one level.
Chunk lengths of 9 and 17 frames (2 and 3 latent frames) force idle ranks and halos gathered from two slices.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import pytest
import torch
import torch.distributed as dist

from gen3c_dist.model.tokenizer import VideoTokenizer, VideoTokenizerConfig, tokenizer_preset
from gen3c_dist.parallel.comm_counter import CommCounter
from gen3c_dist.parallel.decode_parallel import (
    TimeSplit, decode_distributed, decode_to_uint8_distributed, halo_plan, time_split_hooks,
)
from gen3c_dist.parallel.tokenizer_parallel import (
    DecodeSlice, decode_output_bytes, encode_bytes_sent, encode_distributed, plan_decode_slices, plan_encodes,
)
from tests.dist_utils import relative_error, run_distributed

TOLERANCE = 1e-5  # max |error| / max |reference|, as tests/test_parallel_equivalence.py
MAX_FLIPPED_FRACTION = 1e-3  # uint8 levels that truncation may flip (by one) when the floats differ by ~1e-7


pytestmark = pytest.mark.usefixtures("single_thread")


@functools.lru_cache(maxsize=None)
def _tokenizer(chunk: int = 121) -> VideoTokenizer:
    return VideoTokenizer.random(tokenizer_preset("tiny"), VideoTokenizerConfig(pixel_chunk_duration=chunk), seed=5)


def _videos(n: int, h: int = 32, w: int = 48, t: int = 121) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    return [torch.rand(1, 3, t, h, w, generator=g) * 2 - 1 for _ in range(n)]


def _specs(videos: list[torch.Tensor]) -> list[tuple[tuple[int, ...], torch.dtype]]:
    return [(tuple(v.shape), v.dtype) for v in videos]


def _latent(t: int, h: int, w: int, seed: int = 3) -> torch.Tensor:
    return torch.randn(1, 16, t, h, w, generator=torch.Generator().manual_seed(seed))


# (name, chunk frames, latent (T, h, w)); chunk 121 <-> 16 latent frames
DECODES = {"main": (121, (16, 8, 12)), "two_chunks": (121, (32, 4, 6)), "lt3": (17, (3, 4, 6)), "lt2": (9, (2, 4, 6))}


@functools.lru_cache(maxsize=None)
def _reference_decode(name: str) -> torch.Tensor:
    chunk, thw = DECODES[name]
    return _tokenizer(chunk).decode(_latent(*thw))


def _traced_tokenizer() -> VideoTokenizer:
    """The tiny decoder as a TorchScript module, as the released ``decoder.jit`` backend would load it."""
    tok = _tokenizer(9)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about the fixed T > 1 branch
        traced = torch.jit.trace(tok.decoder, _latent(2, 4, 6), check_trace=False)
    return VideoTokenizer(tok.config, None, traced, tok.latent_mean, tok.latent_std)


# ---- rank bodies -----------------------------------------------------------------------------------------------
def _encode_case(n_jobs: int, src: int, group: Any) -> dict[str, Any]:
    videos = _videos(n_jobs)
    counter = CommCounter()
    latents = encode_distributed(_tokenizer(), videos if dist.get_rank() == src else None, _specs(videos),
                                 group=group, src=src, counter=counter)
    return {"latents": latents, "bytes": sum(counter.pending.values())}


def _decode_case(name: str, group: Any, dst: int, to_all: bool) -> dict[str, Any]:
    chunk, thw = DECODES[name]
    counter = CommCounter()
    video = decode_distributed(_tokenizer(chunk), _latent(*thw), group=group, dst=dst, to_all=to_all, counter=counter)
    return {"video": video, "bytes": counter.pending}


def run_world(env: Any, world_size: int) -> dict[str, Any]:
    world = dist.group.WORLD
    out: dict[str, Any] = {"encode5_src0": _encode_case(5, 0, world)}
    out["decode_main_dst0"] = _decode_case("main", world, 0, False)
    out["decode_main_all"] = _decode_case("main", world, world_size - 1, True)
    out["uint8_dst_last"] = decode_to_uint8_distributed(_tokenizer(), _latent(16, 8, 12), group=world,
                                                        dst=world_size - 1)
    traced = _traced_tokenizer()
    out["torchscript_all"] = decode_distributed(traced, _latent(2, 4, 6), group=world, dst=0, to_all=True)
    out["torchscript_uint8"] = decode_to_uint8_distributed(traced, _latent(2, 4, 6), group=world, dst=world_size - 1)
    if world_size == 2:
        out["decode_two_chunks"] = _decode_case("two_chunks", world, 1, True)
    if world_size == 3:
        out["encode2_src1"] = _encode_case(2, 1, world)  # fewer jobs than ranks, source not rank 0
        out["decode_lt3_all"] = _decode_case("lt3", world, 1, True)  # halos from two earlier slices
        out["decode_lt2_idle_dst"] = _decode_case("lt2", world, 2, False)  # rank 2 idle, and the destination
        sub = dist.new_group([1, 2])  # group ranks differ from global ranks; rank 0 stays out
        if env.rank in (1, 2):
            out["sub_encode"] = _encode_case(3, 2, sub)
            out["sub_decode"] = _decode_case("main", sub, 2, False)
    return out


# ---- multi-process tests ---------------------------------------------------------------------------------------
def _assert_video(got: torch.Tensor, name: str, where: str) -> None:
    expected = _reference_decode(name)
    assert got is not None and got.shape == expected.shape, f"{where}: shape"
    error = relative_error(got, expected)
    assert error <= TOLERANCE, f"{where}: differs from the single decode by {error:.2e} (relative)"


def _assert_encodes(result: dict[str, Any], n_jobs: int, expected_bytes: int, where: str) -> None:
    serial = [_tokenizer().encode(v) for v in _videos(n_jobs)]
    assert len(result["latents"]) == n_jobs
    for j, (got, want) in enumerate(zip(result["latents"], serial)):
        assert torch.equal(got, want), f"{where}: latent {j} is not bit-identical to the serial encode"
    assert result["bytes"] == expected_bytes, f"{where}: bytes sent"


@pytest.mark.parametrize("world_size", [2, 3])
def test_group_matches_single_process(world_size: int) -> None:
    ranks = [r.unwrap() for r in run_distributed(run_world, world_size, args=(world_size,), timeout_s=60)]
    tok, last = _tokenizer(), world_size - 1
    group = tuple(range(world_size))
    enc5_bytes = encode_bytes_sent(_specs(_videos(5)), group, 0, tok.config)
    slices = plan_decode_slices(16, world_size, 8)
    frame_bytes = 3 * 64 * 96 * 4
    for rank, res in enumerate(ranks):
        _assert_encodes(res["encode5_src0"], 5, enc5_bytes[rank], f"rank {rank} encode x5")
        dst0 = res["decode_main_dst0"]
        if rank == 0:
            _assert_video(dst0["video"], "main", "decode on rank 0")
        else:
            assert dst0["video"] is None
        assert dst0["bytes"].get("decode_gather", 0) == decode_output_bytes(slices, group, 0, frame_bytes,
                                                                           to_all=False)[rank]
        assert ("decode_halo" in dst0["bytes"]) == (rank < last), f"rank {rank}: halo sends"
        assert ("decode_kv" in dst0["bytes"]) == (rank < last), f"rank {rank}: key/value sends"
        every = res["decode_main_all"]
        _assert_video(every["video"], "main", f"to_all on rank {rank}")
        want = decode_output_bytes(slices, group, last, frame_bytes, to_all=True)[rank]
        assert every["bytes"].get("decode_gather", 0) + every["bytes"].get("decode_broadcast", 0) == want
        _check_uint8(res["uint8_dst_last"], rank == last, f"uint8 on rank {rank}")
        ts_ref = _traced_tokenizer().decode(_latent(2, 4, 6))
        torch.testing.assert_close(res["torchscript_all"], ts_ref, rtol=0, atol=0)
        if rank == last:
            assert torch.equal(res["torchscript_uint8"], _traced_tokenizer().decode_to_uint8(_latent(2, 4, 6)))
        else:
            assert res["torchscript_uint8"] is None
    if world_size == 2:
        for rank, res in enumerate(ranks):
            _assert_video(res["decode_two_chunks"]["video"], "two_chunks", f"two chunks on rank {rank}")
    if world_size == 3:
        _check_three_ranks(ranks)


def _check_uint8(got: torch.Tensor | None, expected_here: bool, where: str) -> None:
    if not expected_here:
        assert got is None, where
        return
    expected = _tokenizer().decode_to_uint8(_latent(16, 8, 12))
    assert got is not None and got.shape == expected.shape and got.dtype == torch.uint8, where
    diff = (got.int() - expected.int()).abs()
    assert int(diff.max()) <= 1, f"{where}: a level differs by {int(diff.max())}"
    flipped = float((diff > 0).float().mean())
    assert flipped <= MAX_FLIPPED_FRACTION, f"{where}: {flipped:.2e} of the levels flipped"


def _check_three_ranks(ranks: list[dict[str, Any]]) -> None:
    tok = _tokenizer()
    enc2_bytes = encode_bytes_sent(_specs(_videos(2)), (0, 1, 2), 1, tok.config)
    sub_bytes = encode_bytes_sent(_specs(_videos(3)), (1, 2), 2, tok.config)
    for rank, res in enumerate(ranks):
        _assert_encodes(res["encode2_src1"], 2, enc2_bytes[rank], f"rank {rank} encode x2")
        _assert_video(res["decode_lt3_all"]["video"], "lt3", f"3 latent frames on rank {rank}")
        idle = res["decode_lt2_idle_dst"]
        if rank == 2:
            _assert_video(idle["video"], "lt2", "idle destination")
            assert "decode_halo" not in idle["bytes"] and "decode_gather" not in idle["bytes"]
        else:
            assert idle["video"] is None and idle["bytes"]["decode_gather"] > 0
        if rank == 0:
            assert "sub_encode" not in res
            continue
        _assert_encodes(res["sub_encode"], 3, sub_bytes[rank], f"subgroup rank {rank} encode")
        if rank == 2:
            _assert_video(res["sub_decode"]["video"], "main", "subgroup decode")
        else:
            assert res["sub_decode"]["video"] is None


# ---- single process ------------------------------------------------------------------------------------------
def test_single_process_paths_are_exact() -> None:
    tok, videos = _tokenizer(), _videos(3)
    latents = encode_distributed(tok, videos, _specs(videos), group=None, src=0)
    for got, video in zip(latents, videos):
        assert torch.equal(got, tok.encode(video))
    z = _latent(16, 8, 12)
    torch.testing.assert_close(decode_distributed(tok, z, group=None, dst=0), tok.decode(z), rtol=0, atol=0)
    assert torch.equal(decode_to_uint8_distributed(tok, z, group=None, dst=4), tok.decode_to_uint8(z))


def test_hooks_are_restored_and_bad_input_raises() -> None:
    tok = _tokenizer()
    modules = list(tok.decoder.modules())
    names = ("time_pad_hook", "attention_hook", "time_upsample_hook", "time_trim_hook")
    split = TimeSplit((0,), 0, (16,), group=None, counter=None)
    with pytest.raises(RuntimeError, match="boom"), time_split_hooks(tok.decoder, split):
        assert any(getattr(m, "attention_hook", None) is not None for m in modules)
        raise RuntimeError("boom")
    assert all(getattr(m, n, None) is None for m in modules for n in names)
    with pytest.raises(ValueError, match="not in the group"):
        plan_encodes([1], [0, 1], 2)
    with pytest.raises(ValueError, match="latent_chunk_duration"):
        decode_distributed(tok, _latent(15, 2, 2), group=None, dst=0)
    with pytest.raises(ValueError, match="multiple of pixel_chunk_duration"):
        encode_distributed(tok, None, [((1, 3, 120, 16, 16), torch.float32)], group=None, src=0)
    with pytest.raises(ValueError, match="one video per spec"):
        encode_distributed(tok, None, [((1, 3, 121, 16, 16), torch.float32)], group=None, src=0)
    with pytest.raises(ValueError, match="batch 1"):
        decode_to_uint8_distributed(tok, torch.zeros(2, 16, 16, 2, 2), group=None, dst=0)


# ---- pure plan -----------------------------------------------------------------------------------------------
def test_decode_slices_are_contiguous_and_balanced() -> None:
    assert plan_decode_slices(16, 2, 8) == (DecodeSlice(0, 8, 0, 57), DecodeSlice(8, 16, 57, 121))
    assert [s.pixel_frames for s in plan_decode_slices(16, 3, 8)] == [41, 40, 40]
    assert [s.latent_frames for s in plan_decode_slices(2, 3, 8)] == [1, 1, 0]
    for latent_frames in range(1, 18):
        for ranks in range(1, 20):
            slices = plan_decode_slices(latent_frames, ranks, 8)
            assert len(slices) == ranks and slices[0].latent_start == 0 and slices[0].pixel_start == 0
            assert all(a.latent_stop == b.latent_start and a.pixel_stop == b.pixel_start
                       for a, b in zip(slices, slices[1:]))
            assert slices[-1].latent_stop == latent_frames and slices[-1].pixel_stop == 1 + 8 * (latent_frames - 1)
            busy = [s.pixel_frames for s in slices if not s.empty]
            assert len(busy) == min(ranks, latent_frames)
            assert max(busy) - min(busy) <= 8, (latent_frames, ranks, busy)  # no better split exists
    with pytest.raises(ValueError, match="latent_frames"):
        plan_decode_slices(0, 2, 8)


def test_encode_plan_and_bytes() -> None:
    assert plan_encodes([7] * 5, [0, 1], 0) == (0, 1, 0, 1, 0)  # round-robin from the source
    assert plan_encodes([7] * 2, [4, 5, 6], 6) == (6, 4)  # fewer jobs than ranks
    assert plan_encodes([1, 5, 1, 1], [0, 1], 1) == (0, 1, 0, 0)  # the big job balances three small ones
    cfg = VideoTokenizerConfig()
    spec = ((1, 3, 121, 16, 24), torch.float32)  # pixels 557568 B, latent 1 x 16 x 16 x 2 x 3 x 4 = 6144 B
    # src 0 sends job 1's pixels and broadcasts jobs 0 and 2; rank 1 broadcasts job 1
    assert encode_bytes_sent([spec] * 3, (0, 1), 0, cfg) == {0: 557568 + 2 * 6144, 1: 6144}
    # owners (2, 0, 1): src 2 sends two inputs; every owner broadcasts one latent to two ranks
    assert encode_bytes_sent([spec] * 3, (0, 1, 2), 2, cfg) == {0: 2 * 6144, 1: 2 * 6144, 2: 2 * 557568 + 2 * 6144}
    slices = plan_decode_slices(16, 2, 8)
    assert decode_output_bytes(slices, (3, 5), 3, 10, to_all=False) == {3: 0, 5: 640}
    assert decode_output_bytes(slices, (3, 5), 3, 10, to_all=True) == {3: 1210, 5: 640}


def test_halo_plan_takes_frames_from_every_earlier_slice_needed() -> None:
    assert halo_plan([8, 8], 2) == {(0, 1): (6, 7)}
    # Slice 1 starts at frame 1: the global padding repeats frame 0, so it needs frame 0 once (used twice).
    assert halo_plan([1, 1, 2, 3], 2) == {(0, 1): (0,), (0, 2): (0,), (1, 2): (1,), (2, 3): (2, 3)}
    assert halo_plan([5], 2) == {}
