"""What travels with a network: one documented place, `d2lft.net_info(net)`.

A network built by d2lft carries one :class:`NetInfo` (in the attribute
``net._d2lft``; read it with :func:`net_info`): its architecture and kind, the class
names and image size of the data it was trained on, its source model's class names
and classifier (exercise 4), and the checkpoint it was loaded from. Builders set the
first fields, training adds the data's, checkpoints save and restore them, and
`predict` / `evaluate` read them. Nothing else is attached to framework objects.
"""

from __future__ import annotations

import dataclasses
from typing import Any

_ATTR = "_d2lft"


@dataclasses.dataclass
class NetInfo:
    """The metadata of one d2lft network.

    - `arch`: 'resnet18_v1' or 'resnet18_v2' (the canonical name).
    - `kind`: 'finetune' (pretrained features, 10x head) or 'scratch'.
    - `backend`: the backend that built it.
    - `classes`: the class names of its outputs (set by training on data whose class
      count matches the head, or by a checkpoint); None when unknown.
    - `image_size`: the crop size it was trained at (None before training).
    - `source_classes`: the pretrained model's class names, in its output order
      (ImageNet's for the model-zoo weights), when known.
    - `source_head`: the pretrained model's classifier layer (not part of the network's
      parameters), for :func:`d2lft.init_head_from_source`.
    - `checkpoint`: the :class:`d2lft.Checkpoint` it was loaded or resumed from.
    """

    arch: str
    kind: str
    backend: str
    classes: list | None = None
    image_size: int | None = None
    source_classes: list | None = None
    source_head: Any = dataclasses.field(default=None, repr=False)
    checkpoint: Any = dataclasses.field(default=None, repr=False)


def net_info(net: Any) -> NetInfo:
    """The :class:`NetInfo` of a network built by d2lft (TypeError for any other)."""
    info = getattr(net, _ATTR, None)
    if not isinstance(info, NetInfo):
        raise TypeError(
            f"this {type(net).__name__} was not built by d2lft (no d2lft metadata): "
            f"build it with d2lft.build_finetune_net / build_scratch_net, or "
            f"load it with d2lft.load_checkpoint"
        )
    return info


def has_info(net) -> bool:
    return isinstance(getattr(net, _ATTR, None), NetInfo)


def attach(net, info: NetInfo) -> NetInfo:
    """Attach `info` to `net` (a plain attribute, never a parameter or child block)."""
    object.__setattr__(net, _ATTR, info)
    return info
