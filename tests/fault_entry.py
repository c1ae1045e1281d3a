"""Test-only entry point: ``gen3c_dist.run.main()`` with one rank made to fail at a chosen stage.

    GEN3C_TEST_FAIL=<rank>:<stage> torchrun --nproc_per_node=2 -m tests.fault_entry --config-name demo ...

``<stage>`` is ``conditioning`` (on entering a chunk's conditioning), ``denoise`` (inside the sampling loop, at
the second call of the guided model) or ``decode`` (on entering the chunk's decode). The failing rank raises an
:class:`InputError` there, the way a late-found bad input would, so its line is the one-line kind. When
``GEN3C_TEST_FAIL_STAMP`` names a file, the failing rank writes the wall-clock time of the failure into it
just before raising, so a test can measure how long every rank took to exit after it. With
``GEN3C_TEST_FAIL_KIND=bug`` it raises a ``RuntimeError`` instead: a bug, not a bad input, whose traceback the
entry point must keep and whose rank torchrun's error record must name.

The runner itself has no test hook: this script patches the stage functions before calling the real entry
point, so nothing here is on the production path. Run it with ``-m`` from the repository root, so that the
worktree's ``gen3c_dist`` is imported.
"""

from __future__ import annotations

import functools
import os
import time

from gen3c_dist.errors import InputError

STAGES = ("conditioning", "denoise", "decode")


def _fail(stage: str) -> None:
    stamp = os.environ.get("GEN3C_TEST_FAIL_STAMP")
    if stamp:
        with open(stamp, "w") as handle:
            handle.write(repr(time.time()))
    message = f"injected failure in {stage} on rank {os.environ.get('RANK', '0')}"
    if os.environ.get("GEN3C_TEST_FAIL_KIND", "input") == "bug":
        raise RuntimeError(message)
    raise InputError(message)


def _failing_before(method, stage: str):
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        _fail(stage)
        return method(*args, **kwargs)

    return wrapper


def _failing_sample(sample):
    @functools.wraps(sample)
    def wrapper(guided_fn, **kwargs):
        calls = []

        def guided(*args, **inner):
            calls.append(1)
            if len(calls) == 2:
                _fail("denoise")
            return guided_fn(*args, **inner)

        return sample(guided, **kwargs)

    return wrapper


def install(stage: str) -> None:
    """Make this process fail at ``stage``."""
    from gen3c_dist.runner import chunks, video

    if stage not in STAGES:
        raise SystemExit(f"GEN3C_TEST_FAIL stage must be one of {STAGES}, got {stage!r}")
    if stage == "denoise":
        video.sample = _failing_sample(video.sample)
        return
    for steps in (chunks.LeadChunkSteps, chunks.GroupChunkSteps):
        name = "condition" if stage == "conditioning" else "decode"
        setattr(steps, name, _failing_before(getattr(steps, name), stage))


def main() -> None:
    rank, _, stage = os.environ.get("GEN3C_TEST_FAIL", "").partition(":")
    if rank and int(rank) == int(os.environ.get("RANK", "0")):
        install(stage)
    from gen3c_dist.run import main as run_main

    run_main()


if __name__ == "__main__":
    main()
