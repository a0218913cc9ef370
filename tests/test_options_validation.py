"""Every field of every option dataclass (d2lft.engine.options: the pipelines and
RunSpec) is checked when the object is built, with a message that starts with the
field's name (the CLI maps it to its flag) and says what is allowed. Table-driven: a
new field, or a new option class, without a row here fails
`test_every_field_has_a_row`; a field whose check is lost fails
`test_bad_values_are_refused_when_built`."""

from __future__ import annotations

import dataclasses
import inspect
import math

import pytest

from d2lft.engine import options

BOOL = [("yes", "must be True or False"), (1, "must be True or False")]

#: class -> field -> [(bad value, the message's text after the field's name)]
BAD = {
    options.BookLoop: {
        "freeze": BOOL,
        "workers": [
            (-1, "must be an integer >= 0 or None"),
            (1.5, "must be an integer >= 0 or None"),
            (True, "must be an integer >= 0 or None"),
        ],
    },
    options.FastPipeline: {
        "freeze": BOOL,
        "precision": [("fp16", "must be one of 'auto', 'fp32', 'bf16', got 'fp16'")],
        "compile": BOOL,
        "decode_cache": [(5, "must be 'memory', 'disk', a folder or None, got 5")],
        "feature_passes": [
            (0, "must be an integer >= 1, got 0"),
            (2, "counts the frozen backbone's feature passes: it needs freeze=True"),
        ],
        "augment": [("bogus", "must be one of 'auto', 'pil', 'roi_align', got 'bogus'")],
        "memory_budget_mb": [
            (0, "must be an integer >= 1 or None, got 0"),
            (-5, "must be an integer >= 1 or None"),
            (2.5, "must be an integer >= 1 or None"),
        ],
    },
    options.AutoPipeline: {
        "freeze": BOOL,
        "memory_budget_mb": [
            (0, "must be an integer >= 1 or None, got 0"),
            ("64", "must be an integer >= 1 or None"),
        ],
    },
    options.FixedBatches: {},
    options.RunSpec: {
        "devices": [
            ((), "must name at least one device"),
            (5, "must be a list of devices"),
        ],
        "seed": [
            (-1, "must be an integer >= 0 or None, got -1"),
            (1.5, "must be an integer >= 0 or None"),
            (True, "must be an integer >= 0 or None"),
        ],
        "val_fraction": [
            (0, "must be a number between 0 and 1 (exclusive)"),
            (1.0, "must be a number between 0 and 1 (exclusive)"),
            ("0.2", "must be a number between 0 and 1 (exclusive)"),
        ],
        "weight_decay": [
            (-0.1, "must be a finite number >= 0 and at most 1e30"),
            (math.nan, "must be a finite number >= 0 and at most 1e30"),
            (math.inf, "must be a finite number >= 0 and at most 1e30"),
        ],
        "verbose": BOOL,
        "checkpoint_dir": [(5, "must be a path or None"), (True, "must be a folder path")],
        "resume": [(5, "must be a path or None"), (True, "=True continues from checkpoint_dir")],
        "dist_timeout": [
            (0, "must be a number of seconds between 1 and 86400, got 0"),
            (10**6, "must be a number of seconds between 1 and 86400"),
            ("60", "must be a number of seconds between 1 and 86400"),
        ],
    },
}


def option_classes():
    """Every option dataclass of d2lft.engine.options: those built from `option()`
    fields (help text), and every pipeline."""
    found = {
        cls
        for _, cls in inspect.getmembers(options, inspect.isclass)
        if dataclasses.is_dataclass(cls)
        and cls.__module__ == options.__name__
        and any("help" in f.metadata for f in dataclasses.fields(cls))
    }
    return found | set(options.PIPELINES.values())


def test_every_field_has_a_row():
    assert option_classes() == set(BAD), "an option class without a row in BAD"
    for cls, rows in BAD.items():
        names = {f.name for f in dataclasses.fields(cls)}
        assert names == set(rows), (cls.__name__, names ^ set(rows))
        for name in names:
            assert rows[name], f"{cls.__name__}.{name}: no bad value in the table"


CASES = [
    pytest.param(cls, name, value, text, id=f"{cls.__name__}.{name}={value!r}")
    for cls, rows in BAD.items()
    for name, values in rows.items()
    for value, text in values
]


@pytest.mark.parametrize("cls, name, value, text", CASES)
def test_bad_values_are_refused_when_built(cls, name, value, text):
    with pytest.raises(ValueError) as info:
        cls(**{name: value})
    message = str(info.value)
    assert message.startswith(name) and text in message, message


@pytest.mark.parametrize("cls", sorted(BAD, key=lambda c: c.__name__))
def test_the_defaults_and_good_values_are_accepted(cls):
    obj = cls()
    assert dataclasses.replace(obj) == obj
    if cls is options.FastPipeline:
        good = cls(freeze=True, feature_passes=3, augment="pil", memory_budget_mb=1)
        assert (good.feature_passes, good.augment, good.memory_budget_mb) == (3, "pil", 1)
    if cls is options.RunSpec:
        good = cls(devices=["cpu"], seed=0, val_fraction=0.5, dist_timeout=1)
        assert good.devices == ("cpu",) and good.dist_timeout == 1.0
