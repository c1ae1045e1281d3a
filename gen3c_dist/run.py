"""Entry point: ``python -m gen3c_dist.run`` / ``torchrun --nproc_per_node=8 -m gen3c_dist.run``.

    python -m gen3c_dist.run --config-name demo                      # tiny random model, synthetic scene, CPU
    python -m gen3c_dist.run input.image=photo.png trajectory.type=zoom_in trajectory.distance=0.5 \
        parallel.ulysses=4 parallel.cfg=2 sampler.steps=35
    python -m gen3c_dist.run --cfg job                               # print the resolved config

Hydra appears only here: the composed config becomes a typed :class:`RunConfig` and everything below receives
plain dataclasses. Presets live in ``conf/`` at the repository root (a source checkout or editable install).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

ASSET_DIR = Path(__file__).resolve().parent / "assets"
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def _register_resolvers() -> None:
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("gen3c_asset"):
        OmegaConf.register_new_resolver("gen3c_asset", lambda name: str(ASSET_DIR / name))


def to_run_config(dict_cfg) -> "RunConfig":  # noqa: F821
    """Hydra's DictConfig -> the typed RunConfig (dataclass validation runs here)."""
    from omegaconf import OmegaConf

    from gen3c_dist.config import RunConfig

    structured = OmegaConf.merge(OmegaConf.structured(RunConfig), dict_cfg)
    return OmegaConf.to_object(structured)


def main() -> None:
    import hydra

    from gen3c_dist.config import register_configs

    register_configs()
    _register_resolvers()

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="gen3c_7b")
    def hydra_entry(dict_cfg) -> None:
        from gen3c_dist.runner.session import run_session

        try:
            cfg = to_run_config(dict_cfg)
        except Exception as err:  # config type errors and dataclass validation: one line, no traceback
            logging.getLogger("gen3c_dist").error("invalid configuration: %s", err)
            sys.exit(2)
        try:
            status = run_session(cfg)
        except ValueError as err:  # bad input: one clear message on every rank, no traceback
            logging.getLogger("gen3c_dist").error("%s", err)
            status = 2
        sys.exit(status)

    hydra_entry()


if __name__ == "__main__":
    main()
