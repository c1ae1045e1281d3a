"""The type, range and finiteness of every numeric config field, checked when the config is composed.

``RunConfig.__post_init__`` runs :func:`check_run_config`, so a bad number is refused when Hydra composes the
config (one line, exit status 2, before anything starts); a batch line's fields go through
:func:`check_fields` when the line is read. Each rule names the key, the value and what is allowed.

The bounds are the ones a careful user would call a mistake to cross, not the official defaults: a guidance of
NaN, 0 steps, a negative seed or 0 fps are mistakes; 100 steps or a guidance of 7 are not. Where the pipeline
itself has a limit (numpy seeds are 32-bit, the latent grid needs multiples of 16), the rule states it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

from gen3c_dist.errors import InputError
from gen3c_dist.shapes import num_chunks

SEED_MAX = 2**32 - 1  # np.random.RandomState, which draws the official condition-augmentation noise


@dataclasses.dataclass(frozen=True)
class Rule:
    """A number of ``kind`` (int or float), finite, optionally null, within the bounds given."""

    kind: type
    ge: Optional[float] = None  # value >= ge
    gt: Optional[float] = None  # value > gt
    le: Optional[float] = None  # value <= le
    multiple_of: Optional[int] = None
    nullable: bool = False
    why: str = ""  # said after the bound, e.g. "(tokenizer x8, patch x2)"

    def problem(self, value: Any) -> Optional[str]:
        """Why ``value`` breaks the rule, or None."""
        if value is None:
            return None if self.nullable else "must be set"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"must be a number, got {type(value).__name__}"
        if self.kind is int and (isinstance(value, float) and not value.is_integer()):
            return "must be a whole number"
        if not math.isfinite(value):
            return "must be finite"
        bounds = [(self.ge, value >= self.ge if self.ge is not None else True, ">="),
                  (self.gt, value > self.gt if self.gt is not None else True, ">"),
                  (self.le, value <= self.le if self.le is not None else True, "<=")]
        for bound, ok, op in bounds:
            if not ok:
                return f"must be {op} {bound:g}" + (f" {self.why}" if self.why else "")
        if self.multiple_of and int(value) % self.multiple_of:
            return f"must be a multiple of {self.multiple_of}" + (f" {self.why}" if self.why else "")
        return None


POSITIVE_INT = Rule(int, ge=1)
NON_NEGATIVE = Rule(float, ge=0)
POSITIVE = Rule(float, gt=0)

RULES: dict[str, dict[str, Rule]] = {
    "model": {
        **{name: POSITIVE_INT for name in ("model_channels", "num_blocks", "num_heads", "crossattn_emb_channels",
                                           "adaln_lora_dim", "patch_spatial", "patch_temporal", "in_channels",
                                           "out_channels", "max_img_h", "max_img_w", "max_frames",
                                           "frame_buffer_max")},
        **{name: POSITIVE for name in ("mlp_ratio", "rope_h_extrapolation_ratio", "rope_w_extrapolation_ratio",
                                       "rope_t_extrapolation_ratio")},
    },
    "checkpoints": {"random_seed": Rule(int, ge=0, le=SEED_MAX)},
    "distributed": {"timeout_s": POSITIVE, "fault_grace_s": NON_NEGATIVE},
    "parallel": {name: Rule(int, ge=1, nullable=True) for name in ("ulysses", "ring", "cfg")} | {
        "data": Rule(int, ge=0, nullable=True)},
    "input": {
        "depth_png_scale": Rule(float, gt=0, nullable=True),
        "num_frames": Rule(int, ge=121, why="(120K + 1 frames: 121, 241, 361, ...)"),
        "height": Rule(int, ge=16, multiple_of=16, why="(tokenizer x8, patch x2)"),
        "width": Rule(int, ge=16, multiple_of=16, why="(tokenizer x8, patch x2)"),
        "fps": Rule(int, ge=1, le=240),
        "seed": Rule(int, ge=0, le=SEED_MAX, why="(numpy seeds are 32-bit)"),
        "start_frame": Rule(int, ge=0),
    },
    "trajectory": {"distance": POSITIVE, "center_depth": POSITIVE},
    "cache": {"filter_points_threshold": NON_NEGATIVE, "noise_aug_strength": NON_NEGATIVE},
    "text": {"max_length": Rule(int, ge=1, le=4096)},
    "sampler": {
        "steps": Rule(int, ge=1, le=1000),
        "guidance": Rule(float, ge=0, why="(F = Fc + g (Fc - Fu); 1 is the official default)"),
        "sigma_min": POSITIVE,
        "sigma_max": POSITIVE,
        "sigma_data": POSITIVE,
        "condition_augment_sigma": NON_NEGATIVE,
    },
    "batch": {"shard_index": Rule(int, ge=0), "num_shards": POSITIVE_INT},
}


def check_fields(section: str, values: Any, *, where: str = "") -> None:
    """Refuse the first field of ``values`` (a dataclass of config ``section``) that breaks its rule."""
    for name, rule in RULES.get(section, {}).items():
        if not hasattr(values, name):
            continue
        problem = rule.problem(getattr(values, name))
        if problem is not None:
            prefix = f"{where}: " if where else ""
            raise InputError(f"{prefix}{section}.{name}={getattr(values, name)!r} {problem}")


def check_run_config(cfg: Any) -> None:
    """Every section's numbers, then the rules that relate two fields."""
    for section in RULES:
        check_fields(section, getattr(cfg, section))
    num_chunks(cfg.input.num_frames)  # 120K + 1, naming the nearest valid counts
    sampler, batch = cfg.sampler, cfg.batch
    if sampler.sigma_max <= sampler.sigma_min:
        raise InputError(f"sampler.sigma_max={sampler.sigma_max:g} must be above sampler.sigma_min={sampler.sigma_min:g}")
    if batch.shard_index >= batch.num_shards:
        raise InputError(f"batch.shard_index={batch.shard_index} must be below batch.num_shards={batch.num_shards}")
