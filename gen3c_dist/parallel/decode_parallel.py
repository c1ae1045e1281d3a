"""Sequence-parallel tokenizer decode: each rank of a group decodes one contiguous latent time slice.

The decoder is causal in time, so the pixels of latent frames [a, b) depend only on frames < b. Every rank runs
the whole decoder on its slice; the only non-local operations get their causal context from the earlier slices
through per-instance hooks on the tokenizer modules (set by :func:`time_split_hooks`, restored afterwards):

* ``CausalConv3d.time_pad_hook``: the ``kt - 1`` frames in front are the previous slices' last input frames
  (point-to-point halo exchange; the slice holding frame 0 keeps replicate-first-frame padding, and a slice near
  the start gets frame 0 again where the global padding would);
* ``CausalTemporalAttention.attention_hook``: keys/values of all earlier slices are sent forward, and the causal
  mask is shifted by the slice's time offset;
* ``HybridUpsample.time_upsample_hook`` (T -> 2T-1) and ``HaarUnpatcher3D.time_trim_hook``: only the slice
  holding global frame 0 drops its leading copies.

GroupNorm and spatial attention are per frame, hence local. Each rank tracks every slice's current length (the
temporal upsampling changes them identically on all ranks), so no shape handshake is needed. The pieces are
then gathered to ``dst`` (or to every rank). Ranks whose slice is empty (more ranks than latent frames) only
take part in the gather.
"""

from __future__ import annotations

import contextlib
import itertools
from typing import Iterator, Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from gen3c_dist.model.tokenizer.attention import CausalTemporalAttention, SpatialAttention
from gen3c_dist.model.tokenizer.blocks import MidBlock, UpLevel
from gen3c_dist.model.tokenizer.decoder import FactorizedDecoder, VideoDecoder
from gen3c_dist.model.tokenizer.layers import CausalConv3d, CausalGroupNorm, HybridUpsample, ResnetBlock
from gen3c_dist.model.tokenizer.patching import HaarUnpatcher3D
from gen3c_dist.model.tokenizer.video_tokenizer import VideoTokenizer, pixels_to_uint8
from gen3c_dist.parallel.comm_counter import CommCounter
from gen3c_dist.parallel.comm import Transfer, broadcast, exchange, group_ranks
from gen3c_dist.parallel.tokenizer_parallel import DecodeSlice, plan_decode_slices

# Every module type the hooks account for; anything else in a decoder might mix frames and is refused.
_KNOWN_MODULES = (VideoDecoder, FactorizedDecoder, MidBlock, UpLevel, ResnetBlock, CausalConv3d, nn.Conv3d,
                  CausalGroupNorm, nn.GroupNorm, HybridUpsample, SpatialAttention, CausalTemporalAttention,
                  HaarUnpatcher3D, nn.Sequential, nn.ModuleList)


def halo_plan(lengths: Sequence[int], count: int) -> dict[tuple[int, int], tuple[int, ...]]:
    """(sender, receiver) slice index -> global frames the sender passes on for a causal pad of ``count``.

    Slice ``r`` starting at frame ``s`` needs frames ``max(0, s - count + i)`` for ``i < count`` (index 0 of the
    global padded sequence is frame 0 repeated), each from the slice owning it; a slice never sends to itself.
    """
    starts = list(itertools.accumulate(lengths, initial=0))
    plan: dict[tuple[int, int], tuple[int, ...]] = {}
    for receiver, start in enumerate(starts[:-1]):
        for frame in sorted({max(0, start - count + i) for i in range(count)}):
            sender = next(q for q in range(len(lengths)) if starts[q] <= frame < starts[q + 1])
            if sender != receiver:
                plan[(sender, receiver)] = plan.get((sender, receiver), ()) + (frame,)
    return plan


class TimeSplit:
    """This rank's view of one sequence-parallel decode: the hook implementations.

    ``worker_ranks`` are the global ranks holding non-empty slices, in time order; ``lengths`` their current
    frame counts. Every worker calls the hooks in the same order (the decoder's module order), so each hook is
    one matched point-to-point batch among the workers.
    """

    def __init__(self, worker_ranks: Sequence[int], index: int, lengths: Sequence[int], *,
                 group: dist.ProcessGroup | None, counter: CommCounter | None) -> None:
        self.worker_ranks, self.index, self.lengths = tuple(worker_ranks), index, tuple(lengths)
        self.group, self.counter = group, counter

    @property
    def start(self) -> int:
        return sum(self.lengths[: self.index])

    def _check_local(self, x_BCTHW: torch.Tensor, where: str) -> None:
        if x_BCTHW.shape[2] != self.lengths[self.index]:
            raise RuntimeError(f"sequence-parallel decode: {where} got {x_BCTHW.shape[2]} frames, the plan says "
                               f"{self.lengths[self.index]}; the decoder mixes frames in a way the hooks miss")

    def pad_front(self, x_BCTHW: torch.Tensor, count: int) -> torch.Tensor:
        """``count`` frames of causal context in front of the local slice (``CausalConv3d.time_pad_hook``)."""
        if count <= 0:
            return x_BCTHW
        self._check_local(x_BCTHW, "a causal conv")
        plan, me, start = halo_plan(self.lengths, count), self.index, self.start
        b, c, _, h, w = x_BCTHW.shape
        sends = [(x_BCTHW[:, :, [f - start for f in frames]], self.worker_ranks[receiver], 0)
                 for (sender, receiver), frames in plan.items() if sender == me]
        incoming = [(sender, frames) for (sender, receiver), frames in plan.items() if receiver == me]
        recvs = [(x_BCTHW.new_empty(b, c, len(frames), h, w), self.worker_ranks[sender], 0)
                 for sender, frames in incoming]
        exchange(sends, recvs, group=self.group, counter=self.counter, kind="decode_halo")
        by_frame = {f: buf[:, :, i : i + 1]
                    for (_, frames), (buf, _, _) in zip(incoming, recvs) for i, f in enumerate(frames)}
        needed = [max(0, start - count + i) for i in range(count)]
        halo = [by_frame[f] if f in by_frame else x_BCTHW[:, :, f - start : f - start + 1] for f in needed]
        return torch.cat(halo + [x_BCTHW], dim=2)

    def causal_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Tokens (N, 1, T_local, C) attend to every earlier global frame (``attention_hook``)."""
        if q.shape[2] != self.lengths[self.index]:
            raise RuntimeError(f"sequence-parallel decode: temporal attention got {q.shape[2]} frames, the plan "
                               f"says {self.lengths[self.index]}")
        me = self.index
        kv_2N1TC = torch.stack([k, v])
        sends = [(kv_2N1TC, rank, 0) for rank in self.worker_ranks[me + 1 :]]
        recvs = [(kv_2N1TC.new_empty(2, k.shape[0], 1, self.lengths[p], k.shape[3]), self.worker_ranks[p], 0)
                 for p in range(me)]
        exchange(sends, recvs, group=self.group, counter=self.counter, kind="decode_kv")
        if me == 0:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        k_all = torch.cat([buf[0] for buf, _, _ in recvs] + [k], dim=2)
        v_all = torch.cat([buf[1] for buf, _, _ in recvs] + [v], dim=2)
        t, prefix = q.shape[2], self.start
        keep_TS = torch.ones(t, prefix + t, dtype=torch.bool, device=q.device).tril(diagonal=prefix)
        return F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=keep_TS)

    def upsample_time(self, x_BCTHW: torch.Tensor) -> torch.Tensor:
        """Global T -> 2T-1: every frame twice, the first copy of frame 0 dropped on slice 0 only."""
        self._check_local(x_BCTHW, "the temporal upsampling")
        if sum(self.lengths) <= 1:
            return x_BCTHW
        self.lengths = tuple(2 * t - (1 if i == 0 else 0) for i, t in enumerate(self.lengths))
        x_BCTHW = x_BCTHW.repeat_interleave(2, dim=2)
        return x_BCTHW[:, :, 1:] if self.index == 0 else x_BCTHW

    def trim_front(self, x_BCTHW: torch.Tensor, count: int) -> torch.Tensor:
        """Drop the first ``count`` frames of the whole video: they all live on slice 0."""
        if self.index != 0:
            return x_BCTHW
        if x_BCTHW.shape[2] < count:
            raise RuntimeError(f"sequence-parallel decode: slice 0 holds {x_BCTHW.shape[2]} frames, fewer than the "
                               f"{count} leading copies of frame 0 to drop")
        return x_BCTHW[:, :, count:]


@contextlib.contextmanager
def time_split_hooks(decoder: nn.Module, split: TimeSplit) -> Iterator[None]:
    """Point the decoder's time hooks at ``split`` for the duration of the block, then restore them."""
    unknown = sorted({type(m).__name__ for m in decoder.modules() if not isinstance(m, _KNOWN_MODULES)})
    if unknown:
        raise ValueError(f"sequence-parallel decode does not know the decoder modules {unknown}")
    hooks = {CausalConv3d: ("time_pad_hook", split.pad_front),
             CausalTemporalAttention: ("attention_hook", split.causal_attention),
             HybridUpsample: ("time_upsample_hook", split.upsample_time),
             HaarUnpatcher3D: ("time_trim_hook", split.trim_front)}
    saved = []
    for module in decoder.modules():
        if isinstance(module, CausalConv3d) and module.time_pad > 0 and module.conv3d.stride[0] != 1:
            raise ValueError("sequence-parallel decode needs temporal stride 1 in every causally padded conv")
        for kind, (name, hook) in hooks.items():
            if isinstance(module, kind):
                saved.append((module, name, getattr(module, name)))
                setattr(module, name, hook)
    try:
        yield
    finally:
        for module, name, previous in saved:
            setattr(module, name, previous)


# ---- decode entry points ---------------------------------------------------------------------------------------
def _check_latent(tokenizer: VideoTokenizer, latent_BCTHW: torch.Tensor) -> None:
    """The single decode's own checks, run on every rank before any communication so all ranks agree."""
    tokenizer.check_decodable(latent_BCTHW)


def _roles(group: dist.ProcessGroup | None, dst: int) -> tuple[tuple[int, ...], int]:
    ranks = group_ranks(group, dst)
    if dst not in ranks:
        raise ValueError(f"decode destination rank {dst} is not in the group {ranks}")
    return ranks, (dst if group is None else dist.get_rank())


@torch.inference_mode()
def _decode_slice(tokenizer: VideoTokenizer, latent_BCTHW: torch.Tensor, slices: Sequence[DecodeSlice],
                  ranks: Sequence[int], me: int, *, group: dist.ProcessGroup | None,
                  counter: CommCounter | None) -> torch.Tensor | None:
    """This rank's pixels (B * chunks, 3, t, H, W), chunks batched as ``VideoTokenizer.decode`` does; None when
    the rank's slice is empty."""
    cfg, mine = tokenizer.config, slices[ranks.index(me)]
    if mine.empty:
        return None
    workers = [(rank, s.latent_frames) for rank, s in zip(ranks, slices) if not s.empty]
    worker_ranks, lengths = [r for r, _ in workers], [n for _, n in workers]
    in_dtype, lt = latent_BCTHW.dtype, cfg.latent_chunk_duration
    b, c, t, h, w = latent_BCTHW.shape
    scaled_NCTHW = (latent_BCTHW / cfg.sigma_data).reshape(b, c, t // lt, lt, h, w).transpose(1, 2)
    scaled_NCTHW = scaled_NCTHW.reshape(-1, c, lt, h, w)
    outs = []
    for i in range(0, scaled_NCTHW.shape[0], cfg.max_dec_batch_size):
        chunk_NCTHW = scaled_NCTHW[i : i + cfg.max_dec_batch_size].to(tokenizer.device)
        raw = chunk_NCTHW * tokenizer.latent_std.to(in_dtype) + tokenizer.latent_mean.to(in_dtype)
        split = TimeSplit(worker_ranks, worker_ranks.index(me), lengths, group=group, counter=counter)
        with time_split_hooks(tokenizer.decoder, split):
            local = raw[:, :, mine.latent_start : mine.latent_stop].to(tokenizer.dtype)
            outs.append(tokenizer.decoder(local).to(in_dtype))
    out_NCTHW = torch.cat(outs, dim=0)
    if out_NCTHW.shape[2] != mine.pixel_frames:
        raise RuntimeError(f"sequence-parallel decode made {out_NCTHW.shape[2]} frames for latent frames "
                           f"[{mine.latent_start}, {mine.latent_stop}); the plan expects {mine.pixel_frames}")
    return out_NCTHW


def _gather_time(local: torch.Tensor | None, slices: Sequence[DecodeSlice], ranks: Sequence[int], me: int, *,
                 dst: int, group: dist.ProcessGroup | None, to_all: bool, piece_shape: Sequence[int], time_dim: int,
                 dtype: torch.dtype, device: torch.device, counter: CommCounter | None) -> torch.Tensor | None:
    """Every piece concatenated along ``time_dim`` on ``dst`` (one point-to-point batch), then broadcast to the
    group with ``to_all``. ``piece_shape`` is a piece's shape with any value at ``time_dim``."""
    if group is None:
        return local

    def shape_with(frames: int) -> tuple[int, ...]:
        return tuple(frames if d == time_dim else n for d, n in enumerate(piece_shape))

    sends: list[Transfer] = []
    recvs: list[Transfer] = []
    parts: list[torch.Tensor] = []
    for rank, piece in zip(ranks, slices):
        if me == dst and rank == me and local is not None:
            parts.append(local)
        elif me == dst and not piece.empty:
            recvs.append((torch.empty(shape_with(piece.pixel_frames), dtype=dtype, device=device), rank, 0))
            parts.append(recvs[-1][0])
    if me != dst and local is not None:
        sends.append((local, dst, 0))
    exchange(sends, recvs, group=group, counter=counter, kind="decode_gather")
    full = torch.cat(parts, dim=time_dim) if me == dst else None
    if to_all:
        if full is None:
            full = torch.empty(shape_with(sum(s.pixel_frames for s in slices)), dtype=dtype, device=device)
        broadcast(full, src=dst, group=group, counter=counter, is_src=me == dst, kind="decode_broadcast")
    return full


def _on_dst_then_broadcast(make, *, me: int, dst: int, group: dist.ProcessGroup | None, to_all: bool,
                           shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
    """The TorchScript fallback: ``make()`` on ``dst`` alone, broadcast to the group with ``to_all``."""
    out = make().contiguous() if me == dst else None
    if to_all and group is not None:
        out = torch.empty(shape, dtype=dtype, device=device) if out is None else out
        dist.broadcast(out, src=dst, group=group)
    return out


def _output_geometry(tokenizer: VideoTokenizer, latent_BCTHW: torch.Tensor) -> tuple[int, int, int, int]:
    """(chunks, pixel frames per chunk, H, W) of the decoded video."""
    cfg = tokenizer.config
    _, _, t, h, w = latent_BCTHW.shape
    return (t // cfg.latent_chunk_duration, cfg.pixel_chunk_duration, h * cfg.spatial_compression,
            w * cfg.spatial_compression)


def decode_distributed(tokenizer: VideoTokenizer, latent_BCTHW: torch.Tensor, *, group: dist.ProcessGroup | None,
                       dst: int, to_all: bool = False, counter: CommCounter | None = None) -> torch.Tensor | None:
    """``tokenizer.decode(latent)`` (B, 3, T, H, W), each rank of ``group`` decoding one time slice.

    Every rank of the group calls this in the same order with the same latent and a tokenizer with the decoder.
    The video comes back on ``dst`` (global rank), or on every rank with ``to_all``; other ranks get ``None``.
    Collectives: per causally padded temporal conv one point-to-point batch (halo), per causal temporal
    attention one (keys/values forward), then one batch of pieces to ``dst``, plus one ``dist.broadcast`` from
    ``dst`` with ``to_all``. A TorchScript decoder (``tokenizer.backend=torchscript``) is one opaque graph with
    no hooks, so it cannot run on a slice: then ``dst`` decodes alone (and broadcasts with ``to_all``).
    Idle ranks (more ranks than latent frames) skip the point-to-point batches; with NCCL that is allowed only
    once the group has run a collective, so call this after e.g. the conditioning broadcast.
    """
    _check_latent(tokenizer, latent_BCTHW)
    ranks, me = _roles(group, dst)
    chunks, frames, height, width = _output_geometry(tokenizer, latent_BCTHW)
    b, dtype, device = latent_BCTHW.shape[0], latent_BCTHW.dtype, tokenizer.device
    if isinstance(tokenizer.decoder, torch.jit.ScriptModule):
        return _on_dst_then_broadcast(lambda: tokenizer.decode(latent_BCTHW), me=me, dst=dst, group=group,
                                      to_all=to_all, shape=(b, 3, chunks * frames, height, width), dtype=dtype,
                                      device=device)
    cfg = tokenizer.config
    slices = plan_decode_slices(cfg.latent_chunk_duration, len(ranks), cfg.temporal_compression)
    local = _decode_slice(tokenizer, latent_BCTHW, slices, ranks, me, group=group, counter=counter)
    channels = tokenizer.decoder.config.out_channels
    full_NCTHW = _gather_time(local, slices, ranks, me, dst=dst, group=group, to_all=to_all,
                              piece_shape=(b * chunks, channels, 0, height, width), time_dim=2, dtype=dtype,
                              device=device, counter=counter)
    if full_NCTHW is None:
        return None
    full = full_NCTHW.reshape(b, chunks, channels, frames, height, width).transpose(1, 2)
    return full.reshape(b, channels, chunks * frames, height, width)


def decode_to_uint8_distributed(tokenizer: VideoTokenizer, latent_BCTHW: torch.Tensor, *,
                                group: dist.ProcessGroup | None, dst: int, to_all: bool = False,
                                counter: CommCounter | None = None) -> torch.Tensor | None:
    """``tokenizer.decode_to_uint8(latent)`` (T, H, W, 3) for a latent of batch 1, as :func:`decode_distributed`.

    Each rank quantises its own pixels before the gather (``pixels_to_uint8`` is per element), so a quarter of
    the float32 bytes travel. Same calls, collectives and TorchScript fallback as :func:`decode_distributed`.
    """
    _check_latent(tokenizer, latent_BCTHW)
    if latent_BCTHW.shape[0] != 1:
        raise ValueError(f"decode to uint8 takes a latent of batch 1, got shape {tuple(latent_BCTHW.shape)}")
    ranks, me = _roles(group, dst)
    chunks, frames, height, width = _output_geometry(tokenizer, latent_BCTHW)
    device = tokenizer.device
    if isinstance(tokenizer.decoder, torch.jit.ScriptModule):
        return _on_dst_then_broadcast(lambda: tokenizer.decode_to_uint8(latent_BCTHW), me=me, dst=dst, group=group,
                                      to_all=to_all, shape=(chunks * frames, height, width, 3), dtype=torch.uint8,
                                      device=device)
    cfg = tokenizer.config
    slices = plan_decode_slices(cfg.latent_chunk_duration, len(ranks), cfg.temporal_compression)
    local_NCTHW = _decode_slice(tokenizer, latent_BCTHW, slices, ranks, me, group=group, counter=counter)
    local_NTHW3 = None
    if local_NCTHW is not None:
        n, c, t = local_NCTHW.shape[:3]
        as_video = local_NCTHW.transpose(0, 1).reshape(1, c, n * t, height, width)  # chunk-major time
        local_NTHW3 = pixels_to_uint8(as_video).reshape(n, t, height, width, 3)
    full_NTHW3 = _gather_time(local_NTHW3, slices, ranks, me, dst=dst, group=group, to_all=to_all,
                              piece_shape=(chunks, 0, height, width, 3), time_dim=1, dtype=torch.uint8,
                              device=device, counter=counter)
    return None if full_NTHW3 is None else full_NTHW3.reshape(chunks * frames, height, width, 3)
