"""Spread the tokenizer work of one chunk over the ranks of a replica group: the plan, and the encodes.

Plan (pure functions, no processes): which rank encodes which job (:func:`plan_encodes`), which contiguous latent
time slice each rank decodes (:func:`plan_decode_slices`), and how many bytes each rank sends
(:func:`encode_bytes_sent`, :func:`decode_output_bytes`).

Encodes (:func:`encode_distributed`): every job is one whole ``tokenizer.encode`` on one rank, so each latent is
bit-identical to a serial encode on the same hardware. The source rank sends each job's pixels to its owner
(point-to-point, overlapped with its own encodes), then every owner broadcasts its latents to the whole group.
Ranks are global ranks throughout; ``group=None`` means a group of one rank (no communication). The point-to-point
batches and group-rank lookup are :mod:`gen3c_dist.parallel.comm`'s, shared with the decode and the render.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import torch
import torch.distributed as dist

from gen3c_dist.model.tokenizer.config import VideoTokenizerConfig
from gen3c_dist.model.tokenizer.video_tokenizer import VideoTokenizer
from gen3c_dist.parallel.broadcast import broadcast_tensors
from gen3c_dist.parallel.comm import Transfer, exchange, group_ranks
from gen3c_dist.parallel.comm_counter import CommCounter

VideoSpec = tuple[tuple[int, ...], torch.dtype]  # (shape, dtype) of one encode job's pixel video


# ---- plan ----------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class DecodeSlice:
    """One rank's share of a chunk's decode: latent frames [latent_start, latent_stop) give pixel frames
    [pixel_start, pixel_stop). An empty slice means the rank is idle (more ranks than latent frames)."""

    latent_start: int
    latent_stop: int
    pixel_start: int
    pixel_stop: int

    @property
    def latent_frames(self) -> int:
        return self.latent_stop - self.latent_start

    @property
    def pixel_frames(self) -> int:
        return self.pixel_stop - self.pixel_start

    @property
    def empty(self) -> bool:
        return self.latent_frames == 0


def plan_decode_slices(latent_frames: int, group_size: int, temporal_compression: int) -> tuple[DecodeSlice, ...]:
    """Contiguous latent slices, one per group index, balanced by output frames (the minimal maximum).

    Latent frame 0 decodes to 1 pixel frame and every later one to ``temporal_compression`` frames, so the later
    frames are split evenly, the remainder going to the last ranks, and index 0 adds frame 0. Ranks beyond
    ``latent_frames`` get empty slices at the end.
    """
    if latent_frames < 1 or group_size < 1 or temporal_compression < 1:
        raise ValueError(f"decode plan needs latent_frames, group_size and temporal_compression >= 1, got "
                         f"{latent_frames}, {group_size}, {temporal_compression}")
    workers = min(group_size, latent_frames)
    base, extra = divmod(latent_frames - 1, workers)
    counts = [base + (1 if i >= workers - extra else 0) for i in range(workers)] + [0] * (group_size - workers)
    counts[0] += 1

    def pixel_index(frame: int) -> int:  # first pixel frame that latent frame ``frame`` decodes to
        return 0 if frame == 0 else 1 + temporal_compression * (frame - 1)

    slices, start = [], 0
    for count in counts:
        stop = start + count
        slices.append(DecodeSlice(start, stop, pixel_index(start), pixel_index(stop)))
        start = stop
    return tuple(slices)


def plan_encodes(job_costs: Sequence[int], group_ranks: Sequence[int], src: int) -> tuple[int, ...]:
    """Owner (global rank) of every job: largest first to the least loaded rank, ties to ``src`` then group order.

    Equal jobs therefore go round-robin starting at ``src``, which holds the inputs and sends nothing for its own.
    """
    if src not in group_ranks:
        raise ValueError(f"encode source rank {src} is not in the group {tuple(group_ranks)}")
    preference = [src] + [r for r in group_ranks if r != src]
    loads = dict.fromkeys(preference, 0)
    owners = [src] * len(job_costs)
    for job in sorted(range(len(job_costs)), key=lambda j: -job_costs[j]):
        owner = min(preference, key=lambda r: loads[r])  # min keeps the first of equal loads
        owners[job] = owner
        loads[owner] += job_costs[job]
    return tuple(owners)


def latent_shape(video_shape: Sequence[int], config: VideoTokenizerConfig) -> tuple[int, ...]:
    """Shape of ``encode(video)`` for a pixel video shape (B, 3, T, H, W)."""
    b, _, t, h, w = video_shape
    lt = t // config.pixel_chunk_duration * config.latent_chunk_duration
    return (b, config.latent_ch, lt, h // config.spatial_compression, w // config.spatial_compression)


def _nbytes(shape: Sequence[int], dtype: torch.dtype) -> int:
    return math.prod(shape) * torch.empty((), dtype=dtype).element_size()


def encode_bytes_sent(specs: Sequence[VideoSpec], group_ranks: Sequence[int], src: int,
                      config: VideoTokenizerConfig) -> dict[int, int]:
    """Bytes each global rank sends in :func:`encode_distributed` (a broadcast counts once per receiver)."""
    owners = plan_encodes([math.prod(shape) for shape, _ in specs], group_ranks, src)
    sent = dict.fromkeys(group_ranks, 0)
    for (shape, dtype), owner in zip(specs, owners):
        if owner != src:
            sent[src] += _nbytes(shape, dtype)
        sent[owner] += _nbytes(latent_shape(shape, config), dtype) * (len(group_ranks) - 1)
    return sent


def decode_output_bytes(slices: Sequence[DecodeSlice], group_ranks: Sequence[int], dst: int, frame_bytes: int, *,
                        to_all: bool) -> dict[int, int]:
    """Bytes each global rank sends to assemble the decoded video (``frame_bytes``: one pixel frame of all
    chunks). Halo and key/value traffic inside the decoder is not included: a ``CommCounter`` records it."""
    sent = dict.fromkeys(group_ranks, 0)
    for rank, piece in zip(group_ranks, slices):
        if rank != dst:
            sent[rank] += piece.pixel_frames * frame_bytes
    if to_all:
        sent[dst] += sum(s.pixel_frames for s in slices) * frame_bytes * (len(group_ranks) - 1)
    return sent


# ---- distributed encodes ---------------------------------------------------------------------------------------
def _check_specs(specs: Sequence[VideoSpec], config: VideoTokenizerConfig) -> None:
    """The encode's own input rules, checked on every rank before any communication so all ranks agree."""
    for j, (shape, _) in enumerate(specs):
        if len(shape) != 5 or shape[1] != 3:
            raise ValueError(f"encode job {j}: expected a video shape (B, 3, T, H, W), got {tuple(shape)}")
        if shape[2] % config.pixel_chunk_duration:
            raise ValueError(f"encode job {j}: T={shape[2]} is not a multiple of pixel_chunk_duration="
                             f"{config.pixel_chunk_duration}")
        if shape[3] % config.spatial_compression or shape[4] % config.spatial_compression:
            raise ValueError(f"encode job {j}: size {shape[3]}x{shape[4]} is not a multiple of "
                             f"{config.spatial_compression}")


def _check_sources(videos: Sequence[torch.Tensor] | None, specs: Sequence[VideoSpec]) -> None:
    if videos is None or len(videos) != len(specs):
        got = "none" if videos is None else len(videos)
        raise ValueError(f"the encode source rank must pass one video per spec: {len(specs)} specs, {got} videos")
    for j, (video, (shape, dtype)) in enumerate(zip(videos, specs)):
        if (tuple(video.shape), video.dtype) != (tuple(shape), dtype):
            raise ValueError(f"encode job {j}: video is {tuple(video.shape)} {video.dtype}, spec {tuple(shape)} "
                             f"{dtype}")


def encode_distributed(tokenizer: VideoTokenizer, videos: Sequence[torch.Tensor] | None,
                       specs: Sequence[VideoSpec], *, group: dist.ProcessGroup | None, src: int,
                       counter: CommCounter | None = None) -> list[torch.Tensor]:
    """``[tokenizer.encode(v) for v in videos]`` on every rank of ``group``, the encodes spread over its ranks.

    Every rank of the group calls this in the same order. ``src`` (global rank) passes ``videos`` (pixel videos
    (B, 3, T, H, W) in [-1, 1]); the others pass ``None``. Every rank passes the same ``specs`` (shape, dtype)
    per job and a tokenizer (its encoder is used only where a job runs). Latents come back on
    ``tokenizer.device`` in the video dtype. Communication: one point-to-point batch (src -> owners, tag = job
    index), then one broadcast per owning rank in group order (one ``dist.broadcast`` per dtype). Ranks without
    a job skip the batch; with NCCL that is allowed only once the group has run a collective.
    """
    _check_specs(specs, tokenizer.config)
    me = src if group is None else dist.get_rank()
    ranks = group_ranks(group, src)
    owners = plan_encodes([math.prod(shape) for shape, _ in specs], ranks, src)
    if me == src:
        _check_sources(videos, specs)
    device = tokenizer.device
    inputs: dict[int, torch.Tensor] = {}
    sends: list[Transfer] = []
    recvs: list[Transfer] = []
    for j, ((shape, dtype), owner) in enumerate(zip(specs, owners)):
        if me == src and owner == src:
            inputs[j] = videos[j]
        elif me == src:
            sends.append((videos[j].to(device), owner, j))
        elif me == owner:
            inputs[j] = torch.empty(shape, dtype=dtype, device=device)
            recvs.append((inputs[j], src, j))
    # Receivers wait for their pixels; the source encodes its own jobs while its sends drain.
    works = exchange(sends, recvs, group=group, wait=me != src, counter=counter, kind="encode_inputs")
    mine = {j: tokenizer.encode(inputs[j]).contiguous() for j in sorted(inputs)}
    for work in works:
        work.wait()
    return _share_latents(mine, specs, owners, ranks, me=me, group=group, tokenizer=tokenizer, counter=counter)


def _share_latents(mine: dict[int, torch.Tensor], specs: Sequence[VideoSpec], owners: Sequence[int],
                   ranks: Sequence[int], *, me: int, group: dist.ProcessGroup | None, tokenizer: VideoTokenizer,
                   counter: CommCounter | None) -> list[torch.Tensor]:
    """Each owner broadcasts its latents (group order); every rank returns all of them in job order."""
    latents: dict[int, torch.Tensor] = {}
    for owner in ranks:
        jobs = [j for j, o in enumerate(owners) if o == owner]
        if not jobs:
            continue
        spec = {str(j): (latent_shape(specs[j][0], tokenizer.config), specs[j][1]) for j in jobs}
        source = {str(j): mine[j] for j in jobs} if me == owner else None
        received = broadcast_tensors(source, spec, group=group, src=owner, device=tokenizer.device, counter=counter,
                                     kind="encode_latents")
        if me == owner:
            received = source  # the owner keeps its own tensors, not the unpacked copies
        latents.update({int(name): tensor for name, tensor in received.items()})
    return [latents[j] for j in range(len(specs))]
