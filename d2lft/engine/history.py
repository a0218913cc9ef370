"""What a training run returns: per-epoch metrics, speed, time, devices."""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib

from .._sys.atomic import atomic_write_text

#: metrics.json's key of the per-epoch held-out accuracy (the attribute `test_acc`)
HELD_OUT_KEY = "held_out_acc"
_FLOAT_FIELDS = ("examples_per_sec", "wall_seconds", "peak_host_mb", "peak_device_mb")


@dataclasses.dataclass
class History:
    """The record of one `train_fine_tuning` run.

    `train_loss`, `train_acc`, `test_acc` hold one value per epoch (train loss and
    accuracy are the epoch's running means, as the book's `train_ch13` computes
    them). `examples_per_sec` is the book's figure (training examples over the time
    spent in training steps); `wall_seconds` is the whole run, evaluation included.
    `peak_host_mb`: the run's peak resident host memory (MiB, sampled);
    `peak_device_mb`: peak GPU memory allocated by the framework (NaN on CPU);
    `trained_params`: how many parameters the optimizer updated (the head's only
    with `freeze=True`). `config`: the run's options, serialised (see
    :func:`d2lft.engine.options.TrainPlan.config`), and facts found while running:
    `precision_used`, `augment_used` (what 'auto' became), `data_setup_seconds`,
    `bf16_fp32_layers`, `retain_heap`, `trained_params`, `total_params`,
    `resumed_from`. `completed` is False when the
    run was interrupted (Ctrl-C, SIGTERM); `stopped_reason` says why a run ended
    before its last epoch (interrupted, or a callback such as early stopping).
    """

    backend: str
    devices: list
    train_loss: list = dataclasses.field(default_factory=list)
    train_acc: list = dataclasses.field(default_factory=list)
    test_acc: list = dataclasses.field(default_factory=list)
    examples_per_sec: float = float("nan")
    wall_seconds: float = float("nan")
    num_examples: int = 0
    config: dict = dataclasses.field(default_factory=dict)
    completed: bool = True
    stopped_reason: str = ""
    peak_host_mb: float = float("nan")
    peak_device_mb: float = float("nan")
    trained_params: int = 0

    @property
    def epochs(self) -> int:
        return len(self.train_loss)

    @property
    def eval_split(self) -> str:
        """The name of the held-out split the run was evaluated on ('test' for the
        hotdog data, 'val' or 'valid' for such folders): what the printed lines call
        its accuracy (``val acc``); `test_acc` keeps the book's name in Python."""
        return str(self.config.get("eval_split") or "test")

    def add_epoch(self, train_loss, train_acc, test_acc):
        self.train_loss.append(float(train_loss))
        self.train_acc.append(float(train_acc))
        self.test_acc.append(float(test_acc))

    def summary_lines(self):
        """The book's two closing lines."""
        if not self.epochs:
            return ["no epoch completed"]
        return [
            f"loss {self.train_loss[-1]:.3f}, train acc {self.train_acc[-1]:.3f}, "
            f"{self.eval_split} acc {self.test_acc[-1]:.3f}",
            f"{self.examples_per_sec:.1f} examples/sec on {self.devices_str}"
            if math.isfinite(self.examples_per_sec)
            else f"examples/sec not measured (no training step) on {self.devices_str}",
        ]

    @property
    def devices_str(self) -> str:
        return "[" + ", ".join(str(d) for d in self.devices) + "]"

    def __str__(self):
        return "\n".join(self.summary_lines())

    def to_dict(self) -> dict:
        """JSON types; the held-out accuracy is `held_out_acc` (of the split named by
        ``config['eval_split']``; :meth:`from_dict` also reads the older `test_acc`)."""
        d = dataclasses.asdict(self)
        d[HELD_OUT_KEY] = d.pop("test_acc")
        d["devices"] = [str(x) for x in self.devices]
        return {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()
        }

    def to_json(self, path=None, **kw) -> str:
        text = json.dumps(self.to_dict(), indent=kw.pop("indent", 2), **kw)
        if path is not None:
            atomic_write_text(path, text)
        return text

    @classmethod
    def from_dict(cls, d: dict) -> History:
        if HELD_OUT_KEY in d:  # metrics.json since issue 23; `test_acc` before
            d = {**{k: v for k, v in d.items() if k != HELD_OUT_KEY}, "test_acc": d[HELD_OUT_KEY]}
        fields = {f.name for f in dataclasses.fields(cls)}
        d = {
            k: (float("nan") if v is None and k in _FLOAT_FIELDS else v)
            for k, v in d.items()
            if k in fields
        }
        return cls(**d)

    @classmethod
    def from_json(cls, text_or_path) -> History:
        p = pathlib.Path(text_or_path) if not str(text_or_path).lstrip().startswith("{") else None
        text = p.read_text() if p is not None else text_or_path
        return cls.from_dict(json.loads(text))
