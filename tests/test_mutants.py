"""scripts/mutants.py (the mutation audit) stays runnable: every mutant's text is found
exactly once in today's sources, and each names tests that exist. Running the mutants
takes minutes: `python scripts/mutants.py`."""

from __future__ import annotations

import importlib.util
import pathlib

REPO = pathlib.Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location("mutants", REPO / "scripts" / "mutants.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_mutant_still_applies():
    mod = _script()
    assert mod.check_applies() == []
    for mid, (what, edits, tests) in mod.MUTANTS.items():
        assert what and edits and tests, mid
        for t in tests:
            if t.startswith("tests/"):
                assert (REPO / t.split("::")[0]).is_file(), (mid, t)
