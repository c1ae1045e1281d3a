"""``python -m gen3c_dist.run --help``: every config key with its type, default and (for choices) every value.

Generated from the dataclasses of :mod:`gen3c_dist.config`, so it cannot drift from what the runner accepts.
A field's trailing comment in config.py is its description. Hydra's own flags stay under ``--hydra-help``.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import re
import typing
from typing import Any, Iterator

from gen3c_dist import config as config_module

USAGE = """\
usage: python -m gen3c_dist.run [--config-name NAME] [key=value ...]
       torchrun --nproc_per_node=N -m gen3c_dist.run [key=value ...]

Config names (conf/): gen3c_7b (default; real checkpoints), and on a CPU with the tiny random model: demo
(image to video, shipped scene), demo_video (video to video, shipped clip), demo_multiview (four key views).
Modes: set exactly one of input.image (image to video), input.video (video to video), input.key_frames (multi-view).
Model presets (model=NAME): {presets}.
Values with spaces or non-ASCII characters need quotes inside the argument: input.image="'my photo.png'".
Hydra's own flags: --hydra-help, --cfg job (print the resolved config), --resolve.
Dry run of the layout on N GPUs, without starting processes: python -m gen3c_dist.plan --world-size N.

Keys (type, default; for a choice every accepted value):
"""


def _field_comments(cls: type) -> dict[str, str]:
    """Trailing ``# comment`` of each ``name: type = default`` line in the class body."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    found = {}
    for line in source.splitlines():
        match = re.match(r"\s+(\w+):\s*[^=#]+(?:=[^#]*)?#\s*(.+)$", line)
        if match:
            found[match.group(1)] = match.group(2).strip()
    return found


def _leaves(cls: type, prefix: str = "") -> Iterator[tuple[str, Any, Any, str]]:
    """(dotted key, type, default, comment) of every non-dataclass field, depth first."""
    hints = typing.get_type_hints(cls)
    comments = _field_comments(cls)
    for field in dataclasses.fields(cls):
        kind = hints[field.name]
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        if dataclasses.is_dataclass(default):
            yield from _leaves(type(default), f"{prefix}{field.name}.")
        else:
            yield f"{prefix}{field.name}", kind, default, comments.get(field.name, "")


def _type_text(kind: Any) -> str:
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    optional = len(args) < len(typing.get_args(kind))
    base = args[0] if optional and len(args) == 1 else kind
    if isinstance(base, type) and issubclass(base, enum.Enum):
        text = "one of " + " | ".join(base.__members__)  # aliases (bf16, fp32) included
    else:
        text = getattr(base, "__name__", str(base))
    return f"{text} or null" if optional else text


def help_text() -> str:
    lines = [USAGE.format(presets=", ".join(sorted(config_module.MODEL_PRESETS)))]
    for key, kind, default, comment in _leaves(config_module.RunConfig):
        value = "null" if default is None else str(default).lower() if isinstance(default, bool) else str(default) or '""'
        lines.append(f"  {key} = {value}    [{_type_text(kind)}]")
        if comment:
            lines.append(f"      {comment}")
    return "\n".join(lines)


def print_help() -> None:
    print(help_text())
