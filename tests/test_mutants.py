"""scripts/mutants.py (the mutation audit) stays runnable: every mutant's text is found
exactly once in today's sources, and each names tests that exist. Running the mutants
takes minutes: `python scripts/mutants.py`."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest

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


SOURCE = """class A:
    def f(self):
        x = 1
        return x


def f():
    if x:
        return 1  # one
    return 2
"""


def test_a_mutant_can_name_the_function_and_one_of_its_lines():
    """(file, function, old_line, new_line): the line is found inside that function
    whatever surrounds it, keeps its indentation, and must occur there exactly once."""
    mod = _script()
    out = mod.edit_text(SOURCE, ("m.py", "f", "return 1  # one", "return 3"))
    assert "        return 3\n" in out and out.count("return 1") == 0
    assert out.replace("return 3", "return 1  # one") == SOURCE
    # Class.method names one class's method; the module function of that name is untouched
    out = mod.edit_text(SOURCE, ("m.py", "A.f", "return x", "return -x"))
    assert "        return -x\n" in out and "    return 2\n" in out
    for edit in (
        ("m.py", "g", "return 2", "return 0"),  # no such function
        ("m.py", "A.f", "return 2", "return 0"),  # a line of f, not of A.f
        ("m.py", "A.f", "return", "pass"),  # not a whole line
    ):
        with pytest.raises(LookupError):
            mod.edit_text(SOURCE, edit)
    # the old form keeps working: an exact text found once
    assert mod.edit_text(SOURCE, ("m.py", "return 2", "return 0")).endswith("return 0\n")
    with pytest.raises(LookupError):
        mod.edit_text(SOURCE, ("m.py", "return", "pass"))


def test_new_mutants_name_their_function():
    """The mutants written for issue 22 (and after) use the refactor-proof form (in
    Python sources: a notebook's JSON has no functions to name)."""
    mod = _script()
    ids = list(mod.MUTANTS)
    assert "issue22-early-stop-auto-mode" in ids
    for mid in ids[ids.index("issue22-early-stop-auto-mode") :]:
        edits = mod.MUTANTS[mid][1]
        assert all(len(e) == 4 for e in edits if e[0].endswith(".py")), mid


def test_a_mutant_can_name_a_constant():
    mod = _script()
    text = 'KEYS = (\n    "a",\n    "b",\n)\n\n\ndef f():\n    return "b",\n'
    out = mod.edit_text(text, ("m.py", "KEYS", '"b",', ""))
    assert out == 'KEYS = (\n    "a",\n    \n)\n\n\ndef f():\n    return "b",\n'
