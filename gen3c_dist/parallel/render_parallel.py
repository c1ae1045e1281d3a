"""Spread the cache render of one chunk over the ranks of a replica group.

A render warps B x F x N items (batch, frame, buffer; flattened frame-major, see
:class:`gen3c_dist.geometry.cache3d.WarpSource`) and then finishes them on the cache: the 3D cache adds noise
from its generator, the key-frame cache selects two of its N buffers, the 4D cache keeps them as they are. Here
every rank warps one contiguous range of items (:func:`plan_render_ranges`), the source rank gathers the pieces
into the full all-buffer output and finishes it itself, so a 3D cache's generator advances exactly as in a
serial ``cache.render`` and the key-frame selection sees exactly the serial all-buffer render.

Three caches render this way (:class:`ChunkRenderer`). The 3D cache (:class:`Cache3D`) and the key-frame cache
(:class:`gen3c_dist.geometry.buffer_selector.KeyFrameCache`) have a few buffers that serve every target frame,
so they are broadcast to the whole group. In the 4D cache of a video (:class:`gen3c_dist.geometry.cache4d.Cache4D`)
target frame i warps its own source frame, so each rank is sent only the source frames of its own range (a
chunk's 121 frames at 704x1280 are 2.6 GB of points and colours, which a broadcast would copy to every rank).

Ranges start at multiples of WARP_PAIR, so no z-buffer pair is split, and the warp of an item does not depend on
which other items share its batch: the result is bit-identical to the serial render on CPU (tests check it).
Ranks are global ranks throughout; ``group=None`` means a group of one rank (no communication).
"""

from __future__ import annotations

from typing import Optional, Protocol

import torch
import torch.distributed as dist

from gen3c_dist.geometry.cache3d import WARP_PAIR, RenderFinisher, WarpSource, check_cameras, item_frames
from gen3c_dist.parallel.broadcast import broadcast_tensors
from gen3c_dist.parallel.comm_counter import CommCounter
from gen3c_dist.parallel.comm import Transfer, exchange, group_ranks

# The header every rank needs before it can allocate: ok flag, source and camera sizes, optional parts, and the
# buffer count of the finished output. boundary_buffers: 0 = no foreground masking, else the edge mask's buffers.
HEADER_FIELDS = ("ok", "batch", "slots", "buffers", "height", "width", "frames", "has_masks", "boundary_buffers",
                 "images_per_warp", "per_frame", "output_buffers")
_TAG_WARPS, _TAG_MASKS = 0, 1
_STATE_TAGS = {"images": 2, "points": 3, "masks": 4, "boundary": 5}


class ChunkRenderer(Protocol):
    """What :func:`render_distributed` needs of a cache (Cache3D, Cache4D and KeyFrameCache provide it)."""

    @property
    def device(self) -> torch.device: ...

    @property
    def output_buffers(self) -> int:
        """Buffers of the finished render (N, or the 2 a key-frame cache selects)."""

    def chunk_source(self, num_frames: int, start_frame_idx: int = 0) -> WarpSource:
        """The point clouds a chunk of ``num_frames`` target frames starting at ``start_frame_idx`` warps."""

    def render_finisher(self, num_frames: int) -> RenderFinisher:
        """Called on the source while the other ranks' warps are in flight (a 3D cache draws its noise there);
        turns the gathered all-buffer warps into the serial render's output."""


def plan_render_ranges(num_items: int, group_size: int, *, align: int = WARP_PAIR) -> tuple[tuple[int, int], ...]:
    """Contiguous item ranges ``(start, stop)``, one per group index, covering ``[0, num_items)`` in order.

    The balanced cut points ``i * num_items / group_size`` are rounded to the nearest multiple of ``align``, so
    every range starts at a multiple of ``align`` and is within ``align`` of its ideal size. Ranks beyond the
    work get empty ranges.
    """
    if num_items < 0 or group_size < 1 or align < 1:
        raise ValueError(f"render plan needs num_items >= 0, group_size >= 1 and align >= 1, got "
                         f"{num_items}, {group_size}, {align}")
    # Round half up in integers: floor(i T / (g a) + 1/2) * a.
    cuts = [(2 * i * num_items + group_size * align) // (2 * group_size * align) * align for i in range(group_size)]
    cuts = [min(cut, num_items) for cut in cuts] + [num_items]
    return tuple((cuts[i], cuts[i + 1]) for i in range(group_size))


def _source_for_chunk(cache: Optional[ChunkRenderer], w2cs_BF44: Optional[torch.Tensor],
                      Ks_BF33: Optional[torch.Tensor], start_frame_idx: int, device: torch.device,
                      ) -> tuple[Optional[WarpSource], Optional[str]]:
    """The chunk's warp source, or why the source's input cannot be rendered; found before any communication."""
    if cache is None or w2cs_BF44 is None or Ks_BF33 is None:
        return None, "the source rank must pass the cache, w2cs and Ks (got None)"
    if torch.empty(0, device=device).device != cache.device:
        return None, f"device: {device} is not the cache's device {cache.device}"
    try:
        source = cache.chunk_source(w2cs_BF44.shape[1] if w2cs_BF44.dim() == 4 else 0, start_frame_idx)
        check_cameras(w2cs_BF44, Ks_BF33, batch=source.images_BSN3HW.shape[0])
    except ValueError as exc:
        return None, str(exc)
    return source, None


def _share_header(source: Optional[WarpSource], w2cs_BF44: Optional[torch.Tensor], problem: Optional[str], *,
                  output_buffers: int, is_src: bool, group: Optional[dist.ProcessGroup], src: int, device: torch.device,
                  counter: Optional[CommCounter]) -> dict[str, int]:
    """The source's header on every rank (one int64 broadcast); every rank raises if the source's input is bad."""
    sent = None
    if is_src:
        values = [0] * len(HEADER_FIELDS)
        if problem is None:
            B, S, N, _, H, W = source.images_BSN3HW.shape
            values = [1, B, S, N, H, W, w2cs_BF44.shape[1], source.masks_BSN1HW is not None,
                      source.boundary_buffers, source.images_per_warp, source.per_frame, output_buffers]
        sent = {"header": torch.tensor(values, dtype=torch.int64)}
    spec = {"header": ((len(HEADER_FIELDS),), torch.int64)}
    header = broadcast_tensors(sent, spec, group=group, src=src, device=device, counter=counter,
                               kind="render_state")["header"].tolist()
    if is_src and problem is not None:
        raise ValueError(f"render_distributed: {problem}")
    if not header[0]:
        raise ValueError(f"render_distributed: the source rank {src} rejected its input (see its error)")
    return dict(zip(HEADER_FIELDS, header))


def _source_spec(head: dict[str, int], slots: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Shapes of a warp source holding ``slots`` source slots."""
    B, N, H, W = (head[k] for k in ("batch", "buffers", "height", "width"))
    spec = {"images": ((B, slots, N, 3, H, W), torch.float32), "points": ((B, slots, N, H, W, 3), torch.float32)}
    if head["has_masks"]:
        spec["masks"] = ((B, slots, N, 1, H, W), torch.bool)
    if head["boundary_buffers"]:
        spec["boundary"] = ((B, slots, head["boundary_buffers"], H, W), torch.bool)
    return spec


def _source_tensors(source: WarpSource, names) -> dict[str, torch.Tensor]:
    tensors = {"images": source.images_BSN3HW, "points": source.points_BSNHW3, "masks": source.masks_BSN1HW,
               "boundary": source.boundary_BSKHW}
    return {name: tensors[name] for name in names}


def _rank_frames(head: dict[str, int], item_range: tuple[int, int]) -> tuple[int, int]:
    return item_frames(item_range, batch=head["batch"], num_frames=head["frames"], buffers=head["buffers"])


def _share_state(source: Optional[WarpSource], w2cs_BF44: Optional[torch.Tensor], Ks_BF33: Optional[torch.Tensor],
                 head: dict[str, int], item_ranges: tuple[tuple[int, int], ...], ranks: tuple[int, ...], *,
                 is_src: bool, group: Optional[dist.ProcessGroup], src: int, device: torch.device,
                 counter: Optional[CommCounter]) -> tuple[WarpSource, torch.Tensor, torch.Tensor]:
    """This rank's warp source and cameras: the source's own on the source, copies elsewhere.

    The cameras always travel by broadcast. A shared source is broadcast with them; a per-frame source goes
    point to point, each rank receiving only the frames its item range touches.
    """
    B, F = head["batch"], head["frames"]
    if is_src:
        w2cs_BF44, Ks_BF33 = w2cs_BF44.to(device, torch.float32), Ks_BF33.to(device, torch.float32)
        if group is None:
            return source, w2cs_BF44, Ks_BF33
    spec = {"w2cs": ((B, F, 4, 4), torch.float32), "Ks": ((B, F, 3, 3), torch.float32)}
    if not head["per_frame"]:
        spec.update(_source_spec(head, head["slots"]))
    sent = None
    if is_src:
        state_names = [name for name in spec if name not in ("w2cs", "Ks")]
        sent = {"w2cs": w2cs_BF44, "Ks": Ks_BF33, **_source_tensors(source, state_names)}
    got = broadcast_tensors(sent, spec, group=group, src=src, device=device, counter=counter, kind="render_state")
    if is_src:
        if head["per_frame"]:
            _scatter_frames(source, head, item_ranges, ranks, src=src, group=group, counter=counter)
        return source, w2cs_BF44, Ks_BF33  # its own tensors, not the unpacked copies
    if head["per_frame"]:
        lo, hi = _rank_frames(head, item_ranges[ranks.index(dist.get_rank())])
        piece = _receive_frames(head, hi - lo, src=src, group=group, device=device)
        source = WarpSource(piece["images"], piece["points"], piece.get("masks"), piece.get("boundary"),
                            head["images_per_warp"], per_frame=True, first_frame=lo)
    else:
        source = WarpSource(got["images"], got["points"], got.get("masks"), got.get("boundary"),
                            head["images_per_warp"])
    return source, got["w2cs"], got["Ks"]


def _wire(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.to(torch.uint8) if tensor.dtype == torch.bool else tensor  # not every backend sends bool


def _scatter_frames(source: WarpSource, head: dict[str, int], item_ranges: tuple[tuple[int, int], ...],
                    ranks: tuple[int, ...], *, src: int, group: dist.ProcessGroup,
                    counter: Optional[CommCounter]) -> None:
    """Send every other rank the source frames its item range touches (nothing for an empty range)."""
    sends: list[Transfer] = []
    names = list(_source_spec(head, 0))
    for rank, item_range in zip(ranks, item_ranges):
        lo, hi = _rank_frames(head, item_range)
        if rank == src or hi == lo:
            continue
        piece = _source_tensors(source.frames(lo, hi), names)
        sends += [(_wire(piece[name]), rank, _STATE_TAGS[name]) for name in names]
    exchange(sends, [], group=group, counter=counter, kind="render_state")


def _receive_frames(head: dict[str, int], slots: int, *, src: int, group: dist.ProcessGroup,
                    device: torch.device) -> dict[str, torch.Tensor]:
    spec = _source_spec(head, slots)
    wire = {name: torch.empty(shape, dtype=torch.uint8 if dtype == torch.bool else dtype, device=device)
            for name, (shape, dtype) in spec.items()}
    if slots:
        exchange([], [(wire[name], src, _STATE_TAGS[name]) for name in spec], group=group)
    return {name: tensor.to(spec[name][1]) for name, tensor in wire.items()}


def render_distributed(
    cache: Optional[ChunkRenderer],
    w2cs_BF44: Optional[torch.Tensor],
    Ks_BF33: Optional[torch.Tensor],
    *,
    group: Optional[dist.ProcessGroup],
    src: int,
    device: torch.device,
    to_all: bool = False,
    counter: Optional[CommCounter] = None,
    start_frame_idx: int = 0,
) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """``cache.render(w2cs_BF44, Ks_BF33[, start_frame_idx])`` with the warps spread over the ranks of ``group``.

    Every rank of the group calls this in the same order. The source (global rank ``src``) passes its cache
    (a :class:`Cache3D`, a ``KeyFrameCache``, or a :class:`Cache4D` with the chunk's ``start_frame_idx``) and the
    chunk's cameras (w2cs [B, F, 4, 4], Ks [B, F, 3, 3]); the others pass ``None`` for all three
    (``start_frame_idx`` is read on the source only). ``device`` is where this rank computes and communicates (on
    the source: the cache's device). Returns (warps [B, F, K, 3, H, W], masks [B, F, K, 1, H, W]), K = the
    cache's ``output_buffers``, on the source, bit-identical to the serial render and leaving a 3D cache's
    generator in the same state; ``(None, None)`` elsewhere unless ``to_all``. Group index i warps items
    ``plan_render_ranges(B * F * N, group size)[i]``; the source prepares the finish (draws the noise) while it
    waits and finishes (adds the noise, or selects the key-frame buffers) once every piece is in.

    Collectives on ``group``, in this order on every rank:
      1. one ``dist.broadcast`` from ``src`` of the int64 header (:data:`HEADER_FIELDS`); a source whose input is
         bad sends ok=0 and then every rank raises ValueError;
      2. the state: a shared source (3D cache): one ``dist.broadcast`` of the float32 state (images, points,
         w2cs, Ks), then one of the uint8 state (masks and/or boundary) only when the header says the cache has
         any. A per-frame source (4D cache): one float32 broadcast of w2cs and Ks, then one point-to-point
         batch in which the source sends each other rank with a non-empty range the images, points, masks and
         boundary of the frames that range touches (tags 2-5);
      3. one point-to-point batch: each rank other than ``src`` with a non-empty range sends its warps
         (tag 0) and masks (tag 1) to ``src``, which receives them in place while it warps its own range and
         prepares the finish;
      4. with ``to_all``, one float32 ``dist.broadcast`` of the finished warps and masks from ``src``.
    ``group=None`` (a group of one) communicates nothing. ``counter`` records "render_state" (source),
    "render_gather" (senders) and "render_result" (source, ``to_all``) bytes.
    """
    ranks = group_ranks(group, src)
    if src not in ranks:
        raise ValueError(f"render source rank {src} is not in the group {ranks}")
    me = src if group is None else dist.get_rank()
    is_src = me == src
    source, problem = (_source_for_chunk(cache, w2cs_BF44, Ks_BF33, start_frame_idx, device) if is_src
                       else (None, None))
    head = _share_header(source, w2cs_BF44, problem, output_buffers=cache.output_buffers if is_src and source else 0,
                         is_src=is_src, group=group, src=src, device=device, counter=counter)
    B, N, H, W, F = (head[k] for k in ("batch", "buffers", "height", "width", "frames"))
    item_ranges = plan_render_ranges(B * F * N, len(ranks))
    source, w2cs_BF44, Ks_BF33 = _share_state(source, w2cs_BF44, Ks_BF33, head, item_ranges, ranks, is_src=is_src,
                                              group=group, src=src, device=device, counter=counter)
    if not is_src:
        _send_to_source(source, w2cs_BF44, Ks_BF33, item_ranges[ranks.index(me)], src=src, group=group,
                        counter=counter)
        warps = masks = None
    else:
        warps, masks, finish = _gather_at_source(cache, source, w2cs_BF44, Ks_BF33, item_ranges, ranks, src=src,
                                                 group=group)
        warps, masks = finish(warps.view(B, F, N, 3, H, W), masks.view(B, F, N, 1, H, W))
    if to_all and group is not None:
        K = head["output_buffers"]
        spec = {"warps": ((B, F, K, 3, H, W), torch.float32), "masks": ((B, F, K, 1, H, W), torch.float32)}
        sent = None if warps is None else {"warps": warps, "masks": masks}
        got = broadcast_tensors(sent, spec, group=group, src=src, device=device, counter=counter, kind="render_result")
        if not is_src:
            warps, masks = got["warps"], got["masks"]
    return warps, masks


def _send_to_source(source: WarpSource, w2cs_BF44: torch.Tensor, Ks_BF33: torch.Tensor, item_range: tuple[int, int],
                    *, src: int, group: dist.ProcessGroup, counter: Optional[CommCounter]) -> None:
    """Warp this rank's items and send them to the source (nothing to send for an empty range)."""
    start, stop = item_range
    if stop == start:
        return
    images_J3HW, masks_J1HW, _ = source.warp_range(w2cs_BF44, Ks_BF33, start, stop)
    exchange([(images_J3HW, src, _TAG_WARPS), (masks_J1HW, src, _TAG_MASKS)], [], group=group, counter=counter,
             kind="render_gather")


def _gather_at_source(cache: ChunkRenderer, source: WarpSource, w2cs_BF44: torch.Tensor, Ks_BF33: torch.Tensor,
                      item_ranges: tuple[tuple[int, int], ...], ranks: tuple[int, ...], *, src: int,
                      group: Optional[dist.ProcessGroup],
                      ) -> tuple[torch.Tensor, torch.Tensor, RenderFinisher]:
    """Flat warps [items, 3, H, W] and masks [items, 1, H, W] of every buffer, and the cache's finisher.

    The others' ranges are received in place; the receives are posted first, so they overlap the source's own
    warping and the finisher's preparation (a Cache3D draws its noise)."""
    _, _, _, _, H, W = source.images_BSN3HW.shape
    items = item_ranges[-1][1]
    device = source.images_BSN3HW.device
    warps = torch.empty(items, 3, H, W, device=device)
    masks = torch.empty(items, 1, H, W, device=device)
    recvs: list[Transfer] = []
    for rank, (start, stop) in zip(ranks, item_ranges):
        if rank != src and stop > start:
            recvs += [(warps[start:stop], rank, _TAG_WARPS), (masks[start:stop], rank, _TAG_MASKS)]
    works = exchange([], recvs, group=group, wait=False)
    start, stop = item_ranges[ranks.index(src)]
    warps[start:stop], masks[start:stop], _ = source.warp_range(w2cs_BF44, Ks_BF33, start, stop)
    finish = cache.render_finisher(w2cs_BF44.shape[1])
    for work in works:
        work.wait()
    return warps, masks, finish


__all__ = ["ChunkRenderer", "HEADER_FIELDS", "plan_render_ranges", "render_distributed"]
