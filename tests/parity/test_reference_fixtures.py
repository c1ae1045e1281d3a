"""One test per reference fixture case, for every kind found under ``GEN3C_REFERENCE_FIXTURES``.

Each kind ``K`` is computed by ``tests/parity/kinds/K.py``, which defines
``run_case(case: FixtureCase) -> dict[str, Tensor]`` returning every expected tensor (outputs and debug)
by name. A kind without such a module is skipped as "not implemented yet", never passed.
"""

from __future__ import annotations

import importlib

import pytest

from tests.parity.fixture_case import FixtureCase, discover_cases, mismatches

CASES = discover_cases()


def _runner(kind: str):
    try:
        return importlib.import_module(f"tests.parity.kinds.{kind}")
    except ModuleNotFoundError as err:
        if err.name == f"tests.parity.kinds.{kind}":
            return None
        raise


def test_fixture_folder_is_not_empty():
    assert CASES, "no fixture cases found: set GEN3C_REFERENCE_FIXTURES or copy ../shared/fixtures"


@pytest.mark.parametrize("json_path", CASES, ids=[f"{p.parent.name}/{p.stem}" for p in CASES])
def test_reference_case(json_path):
    kind = json_path.parent.name
    runner = _runner(kind)
    if runner is None:
        pytest.skip(f"{kind}: not implemented yet")
    case = FixtureCase.load(json_path)
    results = runner.run_case(case)
    problems = mismatches(case, results)
    assert not problems, f"{kind}/{case.name}:\n  " + "\n  ".join(problems)
