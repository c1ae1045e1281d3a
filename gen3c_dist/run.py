"""Entry point: ``python -m gen3c_dist.run`` / ``torchrun --nproc_per_node=8 -m gen3c_dist.run``.

    python -m gen3c_dist.run --config-name demo                      # tiny random model, synthetic scene, CPU
    python -m gen3c_dist.run --config-name demo_video                # the same, video to video (demo_multiview too)
    python -m gen3c_dist.run input.image=photo.png trajectory.type=zoom_in trajectory.distance=0.5
    python -m gen3c_dist.run input.video=clip_folder/ trajectory.type=left   # video to video (or a .pt, a ViPE folder)
    python -m gen3c_dist.run input.key_frames=scene.npz input.num_frames=361  # multi-view, path from w2cs_all
    torchrun --nproc_per_node=8 -m gen3c_dist.run input.image=photo.png   # the layout is chosen for you
    python -m gen3c_dist.run --cfg job                               # print the resolved config
    python -m gen3c_dist.run --help                                  # every key, its default and its choices

Hydra appears only here: the composed config becomes a typed :class:`RunConfig` and everything below receives
plain dataclasses. Presets live in ``conf/`` at the repository root (a source checkout or editable install).

Imports inside the functions below are deliberate: ``--help`` and a bad override must answer at once, before
torch, Hydra's app machinery or the runner are imported (several seconds on a cold machine).

Exit status: 0 when every video was made, 1 when a batch line failed or a rank raised an unexpected error
(its traceback is printed, and torchrun's error record names the rank) or stopped because another rank failed
(one line naming that rank), 2 for a bad input or configuration: one line naming the input and the problem, no
traceback; 130 after Ctrl-C (one line saying what was kept).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

ASSET_DIR = Path(__file__).resolve().parent / "assets"
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
BAD_INPUT_STATUS = 2
PEER_FAILED_STATUS = 1
INTERRUPTED_STATUS = 130  # 128 + SIGINT, what a shell reports for an interrupted command


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


def config_error_line(err: Exception) -> str:
    """OmegaConf's multi-line validation message as one line: the key first, then what was wrong."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    key = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("full_key:")), None)
    message = lines[0] if lines else type(err).__name__
    return f"{key}: {message}" if key else message


QUOTING_HINT = (
    "; a value with spaces or characters such as = , [ ] ( ) needs quotes inside the argument, e.g. "
    "input.image=\"'my photo (1).png'\" (see README, 'Running')"
)


def _split_argv(argv: list[str]) -> tuple[str, list[str]] | None:
    """(config name, overrides) of a plain run; None when other Hydra flags are present (Hydra handles them)."""
    name, overrides, i = "gen3c_7b", [], 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("--config-name", "-cn") and i + 1 < len(argv):
            name, i = argv[i + 1], i + 2
            continue
        if arg.startswith("--config-name="):
            name = arg.split("=", 1)[1]
        elif arg.startswith("-"):
            return None
        else:
            overrides.append(arg)
        i += 1
    return name, overrides


def check_overrides(argv: list[str]) -> str | None:
    """Compose the config as Hydra will; a composition error as one line (None when it composes).

    Hydra reports a bad override (an unknown choice, a wrong type, a value its grammar cannot parse) itself,
    over several lines with exit status 1; composing once up front lets the runner refuse it like any other
    bad input: one line and status 2, before anything starts.
    """
    split = _split_argv(argv)
    if split is None:
        return None
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from gen3c_dist.config import register_configs

    register_configs()
    _register_resolvers()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            to_run_config(compose(config_name=split[0], overrides=split[1]))
    except Exception as err:  # every composition error is the user's: unknown key, bad value, bad syntax
        line = config_error_line(err.__cause__ or err)
        if "OverrideParseException" in type(err).__name__ or "mismatched input" in str(err) or "no viable" in str(err):
            line += QUOTING_HINT
        return line
    finally:
        GlobalHydra.instance().clear()
    return None


def exit_now(status: int) -> None:
    """End the process without the interpreter's teardown, after flushing the logs.

    After Ctrl-C or a failure in a distributed run, the teardown (process-group destructors, a writer thread
    cut short) took about two seconds here and could wait on a peer that is gone; every output file is
    already complete or left under a temporary name, so nothing it would do is needed.
    """
    from gen3c_dist.parallel.watchdog import flush_logs

    flush_logs()
    os._exit(status)


def main() -> None:
    if any(arg in ("--help", "-h") for arg in sys.argv[1:]):
        from gen3c_dist.cli_help import print_help

        print_help()
        return
    problem = check_overrides(sys.argv[1:])
    if problem is not None:
        print(f"gen3c_dist: invalid configuration: {problem}", file=sys.stderr)
        sys.exit(BAD_INPUT_STATUS)
    import hydra
    from gen3c_dist.config import register_configs
    from gen3c_dist.parallel.error_record import record

    register_configs()
    _register_resolvers()
    # record() writes an uncaught exception (a bug, not a bad input) to torchrun's error file, which the
    # launcher prints naming the failing rank, then re-raises it; Hydra prints its traceback and exits 1.
    # It is torch's decorator except that it keeps the record the fault guard already wrote (error_record).
    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="gen3c_7b")
    @record
    def hydra_entry(dict_cfg) -> None:
        from gen3c_dist.errors import InputError
        from gen3c_dist.parallel.faults import RankFailedError
        from gen3c_dist.runner.interrupt import RunInterrupted
        from gen3c_dist.runner.session import run_session

        log = logging.getLogger("gen3c_dist")
        try:
            cfg = to_run_config(dict_cfg)
        except Exception as err:  # config type errors and dataclass validation: one line, no traceback
            log.error("invalid configuration: %s", config_error_line(err))
            sys.exit(BAD_INPUT_STATUS)
        try:
            status = run_session(cfg)
        except InputError as err:  # bad input: one clear message on every rank, no traceback
            if not err.reported:  # the runner prints it itself where a rank could otherwise leave first
                log.error("%s", err)
            status = BAD_INPUT_STATUS
        except RankFailedError as err:  # another rank failed and printed its error; this one says so, once
            if not (err.announced or err.interrupted):
                log.error("%s", err.summary(int(os.environ.get("RANK", "0"))))
            status = INTERRUPTED_STATUS if err.interrupted else PEER_FAILED_STATUS
        except RunInterrupted as interrupt:  # Ctrl-C: what was kept, in one line (the lead's), no traceback
            if interrupt.kept:
                log.warning("%s", interrupt.kept)
            status = INTERRUPTED_STATUS
        if status != 0 and (status == INTERRUPTED_STATUS or int(os.environ.get("WORLD_SIZE", "1")) > 1):
            exit_now(status)
        sys.exit(status)

    hydra_entry()


if __name__ == "__main__":
    main()
