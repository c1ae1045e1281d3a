"""Per-rank communication accounting: bytes this rank sent, by collective kind, per denoising step.

Passed in as an optional argument (``counter=None`` everywhere means disabled: the collectives then skip the
bookkeeping entirely). "Sent" counts payload that leaves this rank: an all-to-all excludes the slice a rank keeps,
an all-gather counts this rank's contribution once per peer, a ring step counts the K/V block it passes on.
That is the quantity the layout formulas describe (Ulysses ~ 4 S H / N per layer, ring ~ 2 S H per layer).
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gen3c_dist.config import ModelConfig
    from gen3c_dist.parallel.layout import ParallelLayout


class CommCounter:
    """Accumulates ``add(kind, nbytes)`` into the current step; ``end_step()`` closes it."""

    def __init__(self) -> None:
        self._current: defaultdict[str, int] = defaultdict(int)
        self._steps: list[dict[str, int]] = []

    def add(self, kind: str, nbytes: int) -> None:
        self._current[kind] += int(nbytes)

    def end_step(self) -> None:
        """Called once per denoising step (by ``guided_output``); an empty step is recorded as {}."""
        self._steps.append(dict(self._current))
        self._current = defaultdict(int)

    @property
    def steps(self) -> list[dict[str, int]]:
        """Closed steps, oldest first: ``[{kind: bytes}]``."""
        return [dict(s) for s in self._steps]

    @property
    def pending(self) -> dict[str, int]:
        """Bytes recorded since the last ``end_step``."""
        return dict(self._current)

    def step_total(self, index: int) -> int:
        return sum(self._steps[index].values())

    def totals(self) -> dict[str, int]:
        """Bytes per kind over every step, closed or pending (the serial guidance path never closes a step)."""
        totals: defaultdict[str, int] = defaultdict(int)
        for step in self._steps + [dict(self._current)]:
            for kind, nbytes in step.items():
                totals[kind] += nbytes
        return dict(totals)

    def mean_per_step(self, steps: int) -> dict[str, int]:
        """Bytes per kind averaged over ``steps`` denoising steps."""
        return {kind: nbytes // max(steps, 1) for kind, nbytes in self.totals().items()}

    def reset(self) -> None:
        self._current = defaultdict(int)
        self._steps = []


def expected_bytes_per_step(
    layout: "ParallelLayout", *, model_cfg: "ModelConfig", latent_BCTHW: tuple[int, ...], element_size: int
) -> dict[str, int]:
    """What :class:`CommCounter` should record per rank per step for the native backend (exact formula).

    With S tokens, N = ulysses x ring CP ranks, l = ceil(S / N), D = model width, per block and per forward:
    Ulysses sends 4 B l D (u-1)/u elements (Q, K, V and the output, ~4 S D / N), the ring 2 B l D (r-1)
    (~2 S D); each forward gathers B l P (N-1) output elements (P = patch features); cfg=2 adds one exchange
    of the latent-sized output per step. cfg=1 runs two forwards per step on every rank, cfg=2 one.
    """
    B, _, T, H, W = latent_BCTHW
    pt, ps = model_cfg.patch_temporal, model_cfg.patch_spatial
    tokens = (T // pt) * (H // ps) * (W // ps)
    forwards, elt = 2 // layout.cfg, element_size
    per_rank, D, blocks = -(-tokens // layout.cp), model_cfg.model_channels, model_cfg.num_blocks
    u, r = layout.ulysses, layout.ring
    expected: dict[str, int] = {}
    if u > 1:
        expected["all_to_all"] = forwards * blocks * 4 * B * per_rank * D * elt * (u - 1) // u
    if r > 1:
        expected["ring_p2p"] = forwards * blocks * 2 * B * per_rank * D * elt * (r - 1)
    if layout.cp > 1:
        expected["gather_output"] = forwards * B * per_rank * model_cfg.patch_out_features * elt * (layout.cp - 1)
    if layout.cfg == 2:
        expected["cfg_exchange"] = B * model_cfg.out_channels * T * H * W * elt
    return expected
