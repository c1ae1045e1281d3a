"""``sweep.png``: DiT step time and parallel efficiency against world size, one line per layout (and shape).

Efficiency at N ranks is ``t1 / (N x tN)``, with ``t1`` the single-process step time of the same shape and
the same extra overrides (any single-process run of that shape when no run has the same overrides). Repeats
are reduced to their median before plotting.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Optional


def _shape_key(row: dict) -> tuple:
    return (row["preset"], row["height"], row["width"], row["frames"])


def _series(rows: list[dict]) -> dict[tuple, dict[int, float]]:
    """(layout, shape, variant, overrides) -> {world size: median step seconds}, successful runs only."""
    samples: dict[tuple, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        if row.get("error") or not row.get("dit_step_s"):
            continue
        key = (row["layout"], _shape_key(row), row.get("variant") or "", row.get("overrides") or "")
        samples[key][int(row["world_size"])].append(float(row["dit_step_s"]))
    return {key: {n: statistics.median(v) for n, v in sorted(by_n.items())} for key, by_n in samples.items()}


def single_step_time(series: dict[tuple, dict[int, float]], shape: tuple, overrides: str) -> Optional[float]:
    """t1 for a shape: the single layout with the same overrides, else any single run of that shape."""
    exact = [s[1] for (layout, sh, _, ov), s in series.items() if layout == "single" and sh == shape and ov == overrides and 1 in s]
    loose = [s[1] for (layout, sh, _, _), s in series.items() if layout == "single" and sh == shape and 1 in s]
    found = exact or loose
    return statistics.median(found) if found else None


def efficiencies(rows: list[dict]) -> dict[tuple, dict[int, float]]:
    """Parallel efficiency per series and world size (series without a t1 are left out)."""
    series = _series(rows)
    out = {}
    for key, by_n in series.items():
        t1 = single_step_time(series, key[1], key[3])
        if t1:
            out[key] = {n: t1 / (n * t) for n, t in by_n.items()}
    return out


def _label(key: tuple, many_shapes: bool) -> str:
    layout, (preset, height, width, frames), variant, _ = key
    label = layout + (f" [{variant}]" if variant else "")
    return label + (f" {preset} {height}x{width} f{frames}" if many_shapes else "")


def plot_sweep(rows: list[dict], path: Path) -> Path:
    import matplotlib  # optional extra [bench]: only the sweep draws plots

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series, effs = _series(rows), efficiencies(rows)
    many_shapes = len({key[1] for key in series}) > 1
    fig, (ax_time, ax_eff) = plt.subplots(1, 2, figsize=(12, 4.5))
    for key, by_n in sorted(series.items()):
        t1 = single_step_time(series, key[1], key[3])
        if t1 and 1 not in by_n:  # every layout's line starts from the single-process point it is measured against
            by_n = {1: t1, **by_n}
        marker = "o" if len(by_n) == 1 else ".-"
        ax_time.plot(list(by_n), [t * 1e3 for t in by_n.values()], marker, label=_label(key, many_shapes))
        if key in effs:
            eff = {1: 1.0, **effs[key]}
            ax_eff.plot(list(eff), list(eff.values()), marker, label=_label(key, many_shapes))
    worlds = sorted({n for by_n in series.values() for n in by_n}) or [1]
    ax_eff.axhline(1.0, color="grey", linewidth=0.8, linestyle="--")
    for ax, title, ylabel in ((ax_time, "DiT step time (median)", "ms per step"),
                              (ax_eff, "parallel efficiency t1 / (N tN)", "efficiency")):
        ax.set_title(title)
        ax.set_xlabel("world size N (processes)")
        ax.set_ylabel(ylabel)
        ax.set_xticks(worlds)
        ax.grid(True, alpha=0.3)
    if series:
        ax_time.legend(fontsize=7)
    if not series:
        ax_time.text(0.5, 0.5, "no successful runs", ha="center", va="center", transform=ax_time.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
