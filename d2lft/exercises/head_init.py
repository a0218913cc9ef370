"""The chapter's exercise 4: start the new head's rows from the source classifier's rows
for the same classes, found by class NAME in the source weights' own class list.

The book's PyTorch tab takes ImageNet row 934 ('hotdog'); its MXNet tab takes row 713,
which is 'photocopier' in the ImageNet order that both frameworks' weights use. Looking
the class up by name avoids that mistake.

Backend-neutral: the network's backend reads and writes the head's rows.
"""

from __future__ import annotations

import difflib
import os
import pathlib
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from .._sys.errors import naming, not_a_file
from ..backends import _registry
from ..netinfo import net_info


def read_class_names(source) -> list:
    """Class names from a list, or from a text file with one name per line (blank
    lines and lines starting with '#' are skipped), e.g. food100-classes.txt."""
    if isinstance(source, (str, os.PathLike)):
        path = pathlib.Path(source).expanduser()
        why = not_a_file(path)
        if why:
            raise naming(
                FileNotFoundError(
                    f"class names file {path}: {why} (expected a text file with one "
                    f"class name per line, in the source model's output order)"
                ),
                "source_classes",
            )
        names = [line.strip() for line in path.read_text().splitlines()]
        return [n for n in names if n and not n.startswith("#")]
    names = [str(n) for n in source]
    if not names:
        raise ValueError("source_classes is empty")
    return names


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", str(name).strip().lower())


def find_class(name, names, what="source") -> int:
    """Index of class `name` in `names`: an int index, an exact name, or the same name
    up to case, spaces, '_' and '-' ('hot_dog' finds 'hot dog'). Raises ValueError
    with the closest names when it is not there."""
    if isinstance(name, (int, np.integer)) and not isinstance(name, bool):
        if not 0 <= int(name) < len(names):
            raise ValueError(f"{what} class index {name} is out of range (0..{len(names) - 1})")
        return int(name)
    if name in names:
        return names.index(name)
    normed = [_norm(n) for n in names]
    if _norm(name) in normed:
        return normed.index(_norm(name))
    close = difflib.get_close_matches(str(name), names, n=5, cutoff=0.5)
    hint = f"; the closest are {close}" if close else ""
    advice = (
        "pass classes=[...] with the target class names, or use the row index"
        if what == "target"
        else "check the spelling, or pass source_classes=[...] (a "
        "list, or a text file with one name per line)"
    )
    raise ValueError(f"{name!r} is not among the {len(names)} {what} classes{hint}: {advice}")


def init_head_from_source(
    net: Any,
    mapping: dict | None = None,
    *,
    classes: Sequence[str] | None = None,
    source_classes: Sequence[str] | str | os.PathLike | None = None,
) -> dict:
    """Copy rows of the source classifier (``net_info(net).source_head``, the pretrained model's
    old output layer) into the new head: `mapping` maps a target class (name or row
    index) to a source class (name or row index), e.g. ``{'hotdog': 'hotdog'}``.

    Target names are looked up in `classes`, else ``net_info(net).classes``; source
    names in `source_classes` (a list or a text file), else
    ``net_info(net).source_classes`` (the ImageNet
    names that come with the framework's weights: torchvision's weight metadata,
    GluonCV's ILSVRC-2012 list). `mapping=None` maps every target class whose name is
    also a source class name. Rows not mapped keep their Xavier initialisation.

    Returns ``{target name: (source index, source name)}`` for what was copied.
    """
    bp = _registry.for_net(net)
    info = net_info(net)
    source_head = info.source_head
    if source_head is None:
        raise ValueError(
            "this network has no source classifier (its source_head is None): "
            "build it with d2lft.build_finetune_net(pretrained=True or a weights "
            "file that includes its output layer)"
        )
    if source_classes is not None:
        src_names = read_class_names(source_classes)
    else:
        src_names = info.source_classes
        if src_names is None:
            raise ValueError(
                "the source model's class names are unknown: pass "
                "source_classes=[...] or a text file with one name per line "
                "(e.g. food100-classes.txt)"
            )
    W, b = bp.head_arrays(source_head)
    if W.shape[0] != len(src_names):
        raise ValueError(
            f"{len(src_names)} source class names given, but the source "
            f"classifier has {W.shape[0]} outputs"
        )
    n_out = bp.num_outputs(net)
    tgt_names = [str(c) for c in classes] if classes is not None else info.classes
    if tgt_names is not None and len(tgt_names) != n_out:
        raise ValueError(
            f"{len(tgt_names)} target class names {tgt_names} but the network has {n_out} outputs"
        )
    if mapping is None:
        if tgt_names is None:
            raise ValueError("mapping=None needs the target class names: pass classes=[...]")
        mapping = {t: t for t in tgt_names if _norm(t) in {_norm(s) for s in src_names}}
        if not mapping:
            raise ValueError(
                f"none of the target classes {tgt_names} is a source class; "
                f"pass mapping={{target: source}}"
            )
    rows, report = {}, {}
    for tgt, src in dict(mapping).items():
        if isinstance(tgt, (int, np.integer)) and not isinstance(tgt, bool):
            t = find_class(
                tgt, [str(i) for i in range(n_out)] if tgt_names is None else tgt_names, "target"
            )
        elif tgt_names is None:
            raise ValueError(
                f"target class {tgt!r} given by name but the network's class "
                f"names are unknown: pass classes=[...] (the data's class folder "
                f"names, sorted) or use the row index"
            )
        else:
            t = find_class(tgt, tgt_names, "target")
        s = find_class(src, list(src_names), "source")
        rows[t] = (W[s], b[s])
        report[tgt_names[t] if tgt_names is not None else t] = (s, src_names[s])
    if W.shape[1] != _head_in_features(bp, net):
        raise ValueError(
            f"the source classifier takes {W.shape[1]} features but the new head "
            f"takes {_head_in_features(bp, net)}"
        )
    bp.set_head_rows(net, rows)
    return report


def _head_in_features(bp, net):
    return bp.head_arrays(bp.head(net))[0].shape[1]
