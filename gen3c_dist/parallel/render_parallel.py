"""Spread the 3D-cache render of one chunk over the ranks of a replica group.

A render warps B x F x N items (batch, frame, buffer; flattened frame-major, see
:class:`gen3c_dist.geometry.cache3d.WarpSource`) and then finishes them on the cache: ``Cache3D`` adds noise
from its generator, the key-frame cache (``gen3c_dist.geometry.buffer_selector.KeyFrameCache``) selects two of
its N buffers. Here every rank warps one contiguous range of items (:func:`plan_render_ranges`), the source rank
gathers the pieces into the full all-buffer output and finishes it itself, so a Cache3D generator advances
exactly as in a serial ``cache.render`` and the key-frame selection sees exactly the serial all-buffer render.

Ranges start at multiples of WARP_PAIR, so no z-buffer pair is split, and the warp of an item does not depend on
which other items share its batch: the result is bit-identical to the serial render on CPU (tests check it).
Ranks are global ranks throughout; ``group=None`` means a group of one rank (no communication).
"""

from __future__ import annotations

from typing import Optional, Protocol

import torch
import torch.distributed as dist

from gen3c_dist.geometry.cache3d import WARP_PAIR, RenderFinisher, WarpSource, check_cameras
from gen3c_dist.parallel.broadcast import broadcast_tensors
from gen3c_dist.parallel.comm_counter import CommCounter
from gen3c_dist.parallel.comm import Transfer, exchange, group_ranks

# The header every rank needs before it can allocate: ok flag, cache and camera sizes, optional parts, and the
# buffer count of the finished output. boundary_buffers: 0 = no foreground masking, else the edge mask's buffers.
HEADER_FIELDS = ("ok", "batch", "buffers", "height", "width", "frames", "has_masks", "boundary_buffers",
                 "images_per_warp", "output_buffers")
_TAG_WARPS, _TAG_MASKS = 0, 1


class RenderableCache(Protocol):
    """What a cache offers to be rendered over a group (``Cache3D`` and ``KeyFrameCache`` do).

    ``warp_source()`` gives the tensors every rank warps from; ``render_finisher(F)`` is called on the source
    while the other ranks' warps are in flight and turns the gathered all-buffer warps into ``render``'s output,
    which has ``output_buffers`` buffers.
    """

    @property
    def device(self) -> torch.device: ...

    @property
    def output_buffers(self) -> int: ...

    def warp_source(self) -> WarpSource: ...

    def render_finisher(self, num_frames: int) -> RenderFinisher: ...


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


def _source_problem(cache: Optional[RenderableCache], w2cs_BF44: Optional[torch.Tensor],
                    Ks_BF33: Optional[torch.Tensor], device: torch.device) -> Optional[str]:
    """Why the source's input cannot be rendered, or None; found before any communication."""
    if cache is None or w2cs_BF44 is None or Ks_BF33 is None:
        return "the source rank must pass the cache, w2cs and Ks (got None)"
    if torch.empty(0, device=device).device != cache.device:
        return f"device: {device} is not the cache's device {cache.device}"
    try:
        check_cameras(w2cs_BF44, Ks_BF33, batch=cache.warp_source().images_BN3HW.shape[0])
    except ValueError as exc:
        return str(exc)
    return None


def _share_header(cache: Optional[RenderableCache], w2cs_BF44: Optional[torch.Tensor], problem: Optional[str], *,
                  is_src: bool, group: Optional[dist.ProcessGroup], src: int, device: torch.device,
                  counter: Optional[CommCounter]) -> dict[str, int]:
    """The source's header on every rank (one int64 broadcast); every rank raises if the source's input is bad."""
    sent = None
    if is_src:
        values = [0] * len(HEADER_FIELDS)
        if problem is None:
            source = cache.warp_source()
            B, N, _, H, W = source.images_BN3HW.shape
            values = [1, B, N, H, W, w2cs_BF44.shape[1], source.masks_BN1HW is not None, source.boundary_buffers,
                      source.images_per_warp, cache.output_buffers]
        sent = {"header": torch.tensor(values, dtype=torch.int64)}
    spec = {"header": ((len(HEADER_FIELDS),), torch.int64)}
    header = broadcast_tensors(sent, spec, group=group, src=src, device=device, counter=counter,
                               kind="render_state")["header"].tolist()
    if is_src and problem is not None:
        raise ValueError(f"render_distributed: {problem}")
    if not header[0]:
        raise ValueError(f"render_distributed: the source rank {src} rejected its input (see its error)")
    return dict(zip(HEADER_FIELDS, header))


def _state_spec(head: dict[str, int]) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    B, N, H, W, F = (head[k] for k in ("batch", "buffers", "height", "width", "frames"))
    spec = {"images": ((B, N, 3, H, W), torch.float32), "points": ((B, N, H, W, 3), torch.float32),
            "w2cs": ((B, F, 4, 4), torch.float32), "Ks": ((B, F, 3, 3), torch.float32)}
    if head["has_masks"]:
        spec["masks"] = ((B, N, 1, H, W), torch.bool)
    if head["boundary_buffers"]:
        spec["boundary"] = ((B, head["boundary_buffers"], H, W), torch.bool)
    return spec


def _share_state(source: Optional[WarpSource], w2cs_BF44: Optional[torch.Tensor], Ks_BF33: Optional[torch.Tensor],
                 head: dict[str, int], *, is_src: bool, group: Optional[dist.ProcessGroup], src: int,
                 device: torch.device, counter: Optional[CommCounter],
                 ) -> tuple[WarpSource, torch.Tensor, torch.Tensor]:
    """This rank's warp source and cameras: the cache's own on the source, broadcast copies elsewhere."""
    if is_src:
        w2cs_BF44, Ks_BF33 = w2cs_BF44.to(device, torch.float32), Ks_BF33.to(device, torch.float32)
        if group is None:
            return source, w2cs_BF44, Ks_BF33
    spec = _state_spec(head)
    tensors = None
    if is_src:
        tensors = {"images": source.images_BN3HW, "points": source.points_BNHW3, "w2cs": w2cs_BF44, "Ks": Ks_BF33,
                   "masks": source.masks_BN1HW, "boundary": source.boundary_BNHW}
        tensors = {name: tensors[name] for name in spec}
    got = broadcast_tensors(tensors, spec, group=group, src=src, device=device, counter=counter, kind="render_state")
    if is_src:
        return source, w2cs_BF44, Ks_BF33  # its own tensors, not the unpacked copies
    source = WarpSource(got["images"], got["points"], got.get("masks"), got.get("boundary"), head["images_per_warp"])
    return source, got["w2cs"], got["Ks"]


def render_distributed(
    cache: Optional[RenderableCache],
    w2cs_BF44: Optional[torch.Tensor],
    Ks_BF33: Optional[torch.Tensor],
    *,
    group: Optional[dist.ProcessGroup],
    src: int,
    device: torch.device,
    to_all: bool = False,
    counter: Optional[CommCounter] = None,
) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
    """``cache.render(w2cs_BF44, Ks_BF33)`` with the warps spread over the ranks of ``group``.

    Every rank of the group calls this in the same order. The source (global rank ``src``) passes its cache (a
    ``Cache3D`` or a ``KeyFrameCache``) and the chunk's cameras (w2cs [B, F, 4, 4], Ks [B, F, 3, 3]); the
    others pass ``None`` for all three. ``device`` is where this rank computes and communicates (on the source:
    the cache's device). Returns (warps [B, F, K, 3, H, W], masks [B, F, K, 1, H, W]), K = the cache's
    ``output_buffers``, on the source, bit-identical to ``cache.render`` (a Cache3D's generator ends in the same
    state); ``(None, None)`` elsewhere unless ``to_all``. Group index i warps items
    ``plan_render_ranges(B * F * N, group size)[i]``; the source prepares the finish (draws the noise) while it
    waits, and finishes (adds the noise, or selects the key-frame buffers) once every piece is in.

    Collectives on ``group``, in this order on every rank:
      1. one ``dist.broadcast`` from ``src`` of the int64 header (:data:`HEADER_FIELDS`); a source whose input is
         bad sends ok=0 and then every rank raises ValueError;
      2. one ``dist.broadcast`` of the float32 state (images, points, w2cs, Ks), then one of the uint8 state
         (masks and/or boundary) only when the header says the cache has any;
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
    problem = _source_problem(cache, w2cs_BF44, Ks_BF33, device) if is_src else None
    head = _share_header(cache, w2cs_BF44, problem, is_src=is_src, group=group, src=src, device=device,
                         counter=counter)
    source, w2cs_BF44, Ks_BF33 = _share_state(cache.warp_source() if is_src else None, w2cs_BF44, Ks_BF33, head,
                                              is_src=is_src, group=group, src=src, device=device, counter=counter)
    B, N, H, W, F = (head[k] for k in ("batch", "buffers", "height", "width", "frames"))
    item_ranges = plan_render_ranges(B * F * N, len(ranks))
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


def _gather_at_source(cache: RenderableCache, source: WarpSource, w2cs_BF44: torch.Tensor, Ks_BF33: torch.Tensor,
                      item_ranges: tuple[tuple[int, int], ...], ranks: tuple[int, ...], *, src: int,
                      group: Optional[dist.ProcessGroup]) -> tuple[torch.Tensor, torch.Tensor, RenderFinisher]:
    """Flat warps [items, 3, H, W] and masks [items, 1, H, W] of every buffer, and the cache's finisher.

    The others' ranges are received in place; the receives are posted first, so they overlap the source's own
    warping and the finisher's preparation (a Cache3D draws its noise)."""
    _, _, _, H, W = source.images_BN3HW.shape
    items = item_ranges[-1][1]
    device = source.images_BN3HW.device
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


__all__ = ["HEADER_FIELDS", "RenderableCache", "plan_render_ranges", "render_distributed"]
