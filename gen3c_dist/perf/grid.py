"""The sweep grid: named layouts mapped to degrees per world size, grid specs from flags or a YAML/JSON file,
and their expansion into runnable entries (each checked with ``plan_layout``) and skipped ones (with a reason).

Layout names and what they mean on N ranks (one video, so data parallelism is always 1):

    single       N = 1                       cfg         N = 2: cond and uncond passes on two ranks
    ulysses      ulysses N                   cfg+ulysses cfg 2 x ulysses N/2
    ring         ring N                      cfg+ring    cfg 2 x ring N/2
    hybrid       ulysses u x ring N/u        cfg+hybrid  cfg 2 x hybrid of N/2

``hybrid`` takes the largest Ulysses degree u that divides the CP size and the head count, fits in one node
(``gpus_per_node``) and leaves a ring of at least 2: the USP arrangement (all-to-all on NVLink, ring across).
A name whose degrees ``plan_layout`` would re-factor (a Ulysses degree that does not divide the heads) does
not fit: the run would be another layout under a wrong name.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path
from typing import Any

from gen3c_dist.config import ParallelConfig, model_preset
from gen3c_dist.parallel.layout import ParallelLayout, plan_layout
from gen3c_dist.sampling.guidance import runs_both_passes

LAYOUTS = ("single", "ulysses", "ring", "hybrid", "cfg", "cfg+ulysses", "cfg+ring", "cfg+hybrid")
# Set by the sweep itself from the grid axes; an override naming one of them is a mistake.
RESERVED_KEYS = (
    "model", "input.height", "input.width", "input.num_frames", "sampler.steps", "parallel.ulysses",
    "parallel.ring", "parallel.cfg", "parallel.data", "output.dir", "output.name",
)
BASE_OVERRIDES = {"runtime.progress": "false", "output.save_buffer": "false", "output.resume": "false"}


def layout_degrees(name: str, world_size: int, *, num_heads: int, gpus_per_node: int = 8) -> dict[str, int]:
    """``{"ulysses", "ring", "cfg"}`` of a named layout on ``world_size`` ranks; ValueError if it does not fit."""
    if name not in LAYOUTS:
        raise ValueError(f"layout {name!r} is unknown; choose from {list(LAYOUTS)}")
    cfg = 2 if name.startswith("cfg") else 1
    if world_size % cfg:
        raise ValueError(f"{name} needs an even world size (cfg 2), got {world_size}")
    cp, kind = world_size // cfg, name.split("+")[-1]
    if kind in ("single", "cfg"):
        if cp != 1:
            raise ValueError(f"{name} runs on exactly {cfg} rank(s), not {world_size}")
        return {"ulysses": 1, "ring": 1, "cfg": cfg}
    if cp < 2:
        raise ValueError(f"{name} needs a context-parallel group of at least 2 ranks; world {world_size} leaves {cp}")
    if kind == "ulysses":
        if num_heads % cp:
            raise ValueError(f"{name}: ulysses {cp} does not divide {num_heads} heads")
        return {"ulysses": cp, "ring": 1, "cfg": cfg}
    if kind == "ring":
        return {"ulysses": 1, "ring": cp, "cfg": cfg}
    fits = [u for u in range(2, min(cp // 2, gpus_per_node) + 1) if cp % u == 0 and num_heads % u == 0]
    if not fits:
        raise ValueError(f"{name}: no ulysses x ring split of {cp} ranks with both >= 2, ulysses dividing "
                         f"{num_heads} heads and at most {gpus_per_node} per node")
    return {"ulysses": fits[-1], "ring": cp // fits[-1], "cfg": cfg}


def checked_layout(degrees: dict[str, int], *, world_size: int, num_heads: int, guidance_runs_both: bool) -> ParallelLayout:
    """Rank 0's layout from ``plan_layout``; a re-factored split (non-empty note) is refused."""
    layout = plan_layout(ParallelConfig(**degrees, data=1), world_size=world_size, rank=0, num_heads=num_heads,
                         guidance_runs_both=guidance_runs_both)
    if layout.note:
        raise ValueError(layout.note)
    return layout


def split_override(text: str) -> tuple[str, str]:
    """``"a.b=c"`` (or Hydra's ``+a.b=c`` / ``++a.b=c``) -> ``("a.b", "c")``."""
    if "=" not in str(text):
        raise ValueError(f"override {text!r} is not of the form key=value")
    key, value = str(text).split("=", 1)
    if not key.lstrip("+"):
        raise ValueError(f"override {text!r} has an empty key")
    return key, value


def guidance_runs_both(overrides: dict[str, str]) -> bool:
    """The guidance rule (:func:`gen3c_dist.sampling.guidance.runs_both_passes`) for a run's overrides."""
    return runs_both_passes(overrides.get("sampler.guidance_policy", "official"),
                            float(overrides.get("sampler.guidance", 1.0)))


def _as_value(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def parse_resolution(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in str(text).lower().split("x"))
    except ValueError:
        raise ValueError(f"resolution {text!r} must read HEIGHTxWIDTH, e.g. 128x192") from None
    return height, width


@dataclasses.dataclass
class GridSpec:
    """One grid: the cartesian product of its lists, times ``repeats``."""

    name: str = "grid"
    world_sizes: list = dataclasses.field(default_factory=lambda: [1, 2])
    layouts: list = dataclasses.field(default_factory=lambda: ["single", "ulysses", "ring", "cfg"])
    resolutions: list = dataclasses.field(default_factory=lambda: ["128x192"])
    frames: list = dataclasses.field(default_factory=lambda: [121])
    steps: list = dataclasses.field(default_factory=lambda: [35])
    preset: str = "tiny"
    config_name: str = "demo"
    overrides: list = dataclasses.field(default_factory=list)  # every run
    axes: dict = dataclasses.field(default_factory=dict)  # override key -> values (cartesian)
    variants: dict = dataclasses.field(default_factory=dict)  # name -> overrides (e.g. before / after)
    repeats: int = 1
    timeout_s: float = 900.0
    threads: int = 1  # OMP_NUM_THREADS per process
    gpus_per_node: int = 8

    def __post_init__(self) -> None:
        for name in self.layouts:
            if name not in LAYOUTS:
                raise ValueError(f"grid {self.name!r}: layout {name!r} is unknown; choose from {list(LAYOUTS)}")
        for field in ("world_sizes", "frames", "steps"):
            values = getattr(self, field)
            if not values or any(not isinstance(v, int) or isinstance(v, bool) or v < 1 for v in values):
                raise ValueError(f"grid {self.name!r}: {field}={values!r} must be a non-empty list of integers >= 1")
        for text in self.resolutions:
            parse_resolution(text)
        if self.repeats < 1 or self.threads < 1 or self.gpus_per_node < 1 or not self.timeout_s > 0:
            raise ValueError(f"grid {self.name!r}: repeats, threads and gpus_per_node must be >= 1 and timeout_s > 0")
        model_preset(self.preset)  # ValueError naming the preset
        for key in [split_override(o)[0] for o in self.overrides] + list(self.axes) + [
            split_override(o)[0] for bundle in self.variants.values() for o in _bundle(bundle)
        ]:
            if key.lstrip("+") in RESERVED_KEYS:
                raise ValueError(f"grid {self.name!r}: override {key!r} is set by the sweep's own axes; use those")
        for variant in self.variants:
            if not str(variant).replace("-", "").replace("_", "").isalnum():
                raise ValueError(f"grid {self.name!r}: variant name {variant!r} may hold letters, digits, - and _ only")


def _bundle(value: Any) -> list[str]:
    return value.split() if isinstance(value, str) else [str(v) for v in (value or [])]


@dataclasses.dataclass(frozen=True)
class GridEntry:
    """One run of the sweep; ``overrides`` are the extra (non-axis) runner overrides, in order."""

    run_id: str
    grid: str
    layout: str
    world_size: int
    ulysses: int
    ring: int
    cfg: int
    preset: str
    config_name: str
    height: int
    width: int
    frames: int
    steps: int
    variant: str
    overrides: tuple
    repeat: int
    threads: int
    timeout_s: float
    gpus_per_node: int = 8

    def runner_overrides(self, run_dir: Path) -> list[str]:
        """Every Hydra override of this run, ``key=value``."""
        return [
            f"model={self.preset}", f"input.height={self.height}", f"input.width={self.width}",
            f"input.num_frames={self.frames}", f"sampler.steps={self.steps}", f"parallel.ulysses={self.ulysses}",
            f"parallel.ring={self.ring}", f"parallel.cfg={self.cfg}", f"output.dir={run_dir}",
            f"output.name={self.run_id}", *self.overrides,
        ]

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "overrides": list(self.overrides)}

    @classmethod
    def from_dict(cls, data: dict) -> "GridEntry":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: (tuple(v) if k == "overrides" else v) for k, v in data.items() if k in names})


def _override_sets(spec: GridSpec) -> list[tuple[str, list[str]]]:
    """(variant name, merged overrides) for every axes combination x variant; later sources win per key."""
    keys = list(spec.axes)
    combos = itertools.product(*[[_as_value(v) for v in spec.axes[k]] for k in keys]) if keys else [()]
    variants = list(spec.variants.items()) or [("", [])]
    out = []
    for combo in combos:
        for variant, bundle in variants:
            merged: dict[str, str] = dict(BASE_OVERRIDES)
            for text in [*spec.overrides, *(f"{k}={v}" for k, v in zip(keys, combo)), *_bundle(bundle)]:
                key, value = split_override(text)
                merged[key] = value
            out.append((str(variant), [f"{k}={v}" for k, v in merged.items()]))
    return out


def expand(specs: list[GridSpec]) -> tuple[list[GridEntry], list[dict]]:
    """Runnable entries (numbered across all grids) and skipped ones ``{grid, layout, world_size, ..., reason}``."""
    entries: list[GridEntry] = []
    skipped: list[dict] = []
    for spec in specs:
        heads = model_preset(spec.preset).num_heads
        for world, name, res, frames, steps, (variant, overrides) in itertools.product(
            spec.world_sizes, spec.layouts, spec.resolutions, spec.frames, spec.steps, _override_sets(spec)
        ):
            height, width = parse_resolution(res)
            where = {"grid": spec.name, "layout": name, "world_size": world, "height": height, "width": width,
                     "frames": frames, "steps": steps, "variant": variant}
            try:
                degrees = layout_degrees(name, world, num_heads=heads, gpus_per_node=spec.gpus_per_node)
                both = guidance_runs_both(dict(split_override(o) for o in overrides))
                checked_layout(degrees, world_size=world, num_heads=heads, guidance_runs_both=both)
            except ValueError as err:
                skipped.append({**where, "reason": str(err)})
                continue
            for repeat in range(spec.repeats):
                index = len(entries)
                run_id = f"{index:03d}_{name.replace('+', '-')}_n{world}_{height}x{width}_f{frames}_s{steps}"
                run_id += (f"_{variant}" if variant else "") + f"_r{repeat}"
                entries.append(GridEntry(
                    run_id=run_id, grid=spec.name, layout=name, world_size=world, **degrees, preset=spec.preset,
                    config_name=spec.config_name, height=height, width=width, frames=frames, steps=steps,
                    variant=variant, overrides=tuple(overrides), repeat=repeat, threads=spec.threads,
                    timeout_s=spec.timeout_s, gpus_per_node=spec.gpus_per_node,
                ))
    return entries, skipped


def specs_from_mapping(data: Any, *, source: str) -> list[GridSpec]:
    """A mapping of GridSpec fields, optionally with ``grids: [ {...}, ... ]`` whose items override it."""
    if not isinstance(data, dict):
        raise ValueError(f"grid {source}: expected a mapping at the top level, got {type(data).__name__}")
    fields = {f.name for f in dataclasses.fields(GridSpec)}
    base = {k: v for k, v in data.items() if k != "grids"}
    items = data.get("grids") or [{}]
    specs = []
    for i, item in enumerate(items):
        merged = {**base, **(item or {})}
        unknown = sorted(set(merged) - fields)
        if unknown:
            raise ValueError(f"grid {source}: unknown key(s) {unknown}; known: {sorted(fields)}")
        merged.setdefault("name", f"grid{i}")
        specs.append(GridSpec(**merged))
    return specs


def load_grid(name_or_path: str) -> list[GridSpec]:
    """A preset name from :data:`GRID_PRESETS`, or a YAML/JSON file."""
    if name_or_path in GRID_PRESETS:
        return specs_from_mapping(GRID_PRESETS[name_or_path], source=name_or_path)
    path = Path(name_or_path)
    if not path.is_file():
        raise ValueError(f"--grid {name_or_path!r} is neither a preset ({sorted(GRID_PRESETS)}) nor a readable file")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        data = json.loads(text)
    else:
        import yaml  # PyYAML, via omegaconf; only a YAML grid file needs it

        data = yaml.safe_load(text)
    return specs_from_mapping(data, source=str(path))


# The CPU report at the demo shape (tiny preset, 128x192, 121 frames, 35 steps): 1, 2 and 3 processes over every
# layout that fits 4 heads, then 2 processes before (lead-rank tokenizer, no overlap), after (defaults: the
# replica shares render/encodes/decode; overlap is auto = off on the CPU) and after with overlap forced on.
# 33 runs of 10-15 s each: about 7 minutes on 2 cores.
GRID_PRESETS: dict[str, dict] = {
    "cpu-report": {
        "preset": "tiny", "config_name": "demo", "resolutions": ["128x192"], "frames": [121], "steps": [35],
        "repeats": 3, "threads": 1, "timeout_s": 300,
        "grids": [
            {"name": "layouts", "world_sizes": [1, 2, 3], "layouts": list(LAYOUTS)},
            {"name": "before_after", "world_sizes": [2], "layouts": ["ulysses", "cfg"],
             "variants": {"before": ["parallel.tokenizer=lead", "runtime.overlap=false"], "after": [],
                          "after_overlap": ["runtime.overlap=true"]}},
        ],
    },
}


def entry_summary(entry: GridEntry) -> str:
    return (f"{entry.layout} n={entry.world_size} (u{entry.ulysses} r{entry.ring} c{entry.cfg}) "
            f"{entry.height}x{entry.width} f{entry.frames} s{entry.steps}" + (f" [{entry.variant}]" if entry.variant else ""))
