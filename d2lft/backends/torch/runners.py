"""The PyTorch tab's training steps behind the engine's :class:`Runner` interface.

All runners do the chapter's step: SGD with weight decay, 10x learning rate on the
parameters marked `lr_mult` (the new head), per-example losses
(``reduction='none'``) summed before ``backward()`` (so the gradient is the batch
*sum*; see `d2lft.equivalent_sgd`); several GPUs through ``nn.DataParallel``.

- :class:`BookRunner`: the book's loaders (or the shared fixed batches), every batch
  through the whole network; with `freeze` only the head learns, the backbone in eval
  mode (exercise 3 the book's way).
- :class:`FastRunner`: the fast pipeline (:mod:`.fastdata`), channels_last, bf16
  autocast where the hardware has it, optional ``torch.compile``; metrics stay on the
  device and are read once per epoch on a GPU.
- :class:`FastFrozenRunner`: exercise 3 with the fast pipeline: backbone features
  computed once for the test set and once per augmentation pass for the training set;
  the head trains on them.
"""

from __future__ import annotations

import contextlib
import math
import time

import torch
from torch import nn

from ...data.crops import epoch_draws
from ...engine.loop import Runner, Step, book_batches, set_fixed_epoch
from .data import make_loaders
from .fastdata import FastData
from .models import HEAD
from .runtime import (
    all_devices,
    autocast,
    bf16_guard,
    count_params,
    device_peak_mb,
    frozen_backbone,
    head_params,
    headless,
    param_groups,
    reset_device_peaks,
    resolve_precision,
    sync,
)


def evaluate_counts(net, data_iter, device=None) -> tuple[int, int]:
    """``(correct, total)`` of `net` over `data_iter` (eval mode, no gradients)."""
    device = device or next(net.parameters()).device
    net.eval()
    correct = total = 0
    with torch.no_grad():
        for X, y in data_iter:
            X, y = X.to(device), y.to(device)
            correct += (net(X).argmax(dim=1) == y).sum().item()
            total += y.numel()
    return correct, total


def evaluate_accuracy(net, data_iter, device=None) -> float:
    """Accuracy of `net` over `data_iter` (eval mode, no gradients)."""
    correct, total = evaluate_counts(net, data_iter, device)
    return correct / max(total, 1)


def _maybe_compile(module, compile):
    return torch.compile(module) if compile else module


class _TorchRunner(Runner):
    """What every torch runner shares: devices, the loss, the optimizer, memory."""

    def __init__(self, net, plan, trained):
        super().__init__()
        self.net, self.plan, self.lr = net, plan, plan.learning_rate
        devices = plan.run.devices
        self.devices = [torch.device(d) for d in devices] if devices else all_devices()
        self.world = plan.world_size
        if plan.job is not None:  # a distributed worker: one device, its own
            self.devices = [plan.job.device]
        self.device = self.devices[0]
        self.loss = nn.CrossEntropyLoss(reduction="none")
        self.trained_params = count_params(trained)
        self.total_params = count_params(net.parameters())
        self._exit = contextlib.ExitStack()
        reset_device_peaks(self.devices)

    def optimizer(self, module):
        return torch.optim.SGD(
            param_groups(module, self.lr, self.plan.param_group),
            lr=self.lr,
            weight_decay=self.plan.run.weight_decay,
        )

    def parallel(self, module):
        """`module` on this runner's device, replicated as the run needs: across the
        workers of a distributed job (DistributedDataParallel, which averages the
        gradients: `backward` scales the summed loss by the world size to keep the
        chapter's summed gradient), or the GPUs of this process (the book's
        DataParallel)."""
        module.to(self.device)
        if self.world > 1:
            ids = [self.device] if self.device.type == "cuda" else None
            return nn.parallel.DistributedDataParallel(module, device_ids=ids)
        if len(self.devices) > 1:
            return nn.DataParallel(module, device_ids=self.devices)
        return module

    def backward(self, l):
        """The chapter's summed loss, backward (times the world size under DDP, whose
        gradient is the workers' mean: the sum over the global batch is then kept)."""
        (l.sum() * self.world if self.world > 1 else l.sum()).backward()

    def device_peak_mb(self):
        return device_peak_mb(self.devices)

    def close(self):
        self._exit.close()


class BookRunner(_TorchRunner):
    """The book's loop: its loaders (or `FixedBatches`), one step per batch."""

    def __init__(self, net, plan, batches=None):
        freeze = plan.freeze
        super().__init__(net, plan, head_params(net) if freeze else list(net.parameters()))
        self.freeze = freeze
        self.train_iter, self.test_iter = book_batches(
            plan, make_loaders, torch.from_numpy, batches
        )
        if freeze:
            self._exit.enter_context(frozen_backbone(net))
        self.trainer = self.optimizer(getattr(net, HEAD) if freeze else net)
        self.model = self.parallel(net)
        self.num_batches = len(self.train_iter)
        self.facts = {"precision_used": "fp32"}

    def set_epoch(self, epoch, seed):
        set_fixed_epoch(self.train_iter, epoch)
        generator = getattr(self.train_iter, "generator", None)
        if seed is not None and generator is not None:
            generator.manual_seed(seed)

    def train_epoch(self, epoch):
        for X, y in self.train_iter:
            t0 = time.perf_counter()
            X, y = X.to(self.device), y.to(self.device)
            # frozen: BatchNorm keeps its statistics, so the features are fixed
            self.model.train(not self.freeze)
            self.trainer.zero_grad()
            pred = self.model(X)
            l = self.loss(pred, y)  # noqa: E741 - the book's name
            self.backward(l)
            self.trainer.step()
            with torch.no_grad():
                batch_loss = float(l.sum())
                correct = (pred.argmax(dim=1) == y).sum().item()
            yield Step(y.numel(), batch_loss, correct, time.perf_counter() - t0)

    def evaluate(self):
        return evaluate_counts(self.model, self.test_iter, self.device)


class _FastBase(_TorchRunner):
    """The fast pipeline's setup: decoded data, precision, channels_last."""

    def __init__(self, net, plan, trained):
        super().__init__(net, plan, trained)
        pipe = plan.pipeline
        self.precision = resolve_precision(pipe.precision, self.device)
        self.sync_each = self.device.type != "cuda"  # a host read costs nothing on a CPU
        net.to(self.device)
        net.to(memory_format=torch.channels_last)
        self._exit.callback(net.to, memory_format=torch.contiguous_format)
        t0 = time.perf_counter()
        self.data = FastData(
            plan.data_dir,
            plan.image_size,
            plan.batch_size,
            self.device,
            seed=plan.run.seed,
            decode_cache=pipe.decode_cache,
            augment=pipe.augment,
            shard=(plan.world_size, plan.rank),
            on_disk=plan.store_on_disk,
        )
        self.num_batches = math.ceil(self.data.num_train / plan.batch_size)
        self.facts = {
            "precision_used": self.precision,
            "augment_used": self.data.augment,
            "data_setup_seconds": round(time.perf_counter() - t0, 3),
        }

    def set_epoch(self, epoch, seed):
        self.data.set_epoch(epoch)

    def step(self, module, X, y, autocast_on=True):
        """Forward (autocast), the summed loss's backward, SGD: (loss, correct) as
        float64 / int64 device scalars."""
        with autocast(self.device, self.precision if autocast_on else "fp32"):
            pred = module(X)
        l = self.loss(pred.float(), y)  # noqa: E741 - the book's name
        self.trainer.zero_grad(set_to_none=True)
        self.backward(l)
        self.trainer.step()
        with torch.no_grad():
            return l.detach().sum().double(), (pred.detach().argmax(dim=1) == y).sum()

    def steps(self, batches, start=None):
        """Yield a Step per (module, X, y, autocast) of `batches`, timed back to back
        from `start` (default now)."""
        last = time.perf_counter() if start is None else start
        for module, X, y, autocast_on in batches:
            loss, correct = self.step(module, X, y, autocast_on)
            if self.sync_each:
                loss, correct = float(loss), int(correct)
            now = time.perf_counter()
            yield Step(y.shape[0], loss, correct, now - last)
            last = now

    def finish_epoch(self):
        t0 = time.perf_counter()
        sync(self.device)
        return time.perf_counter() - t0

    def to_floats(self, values):
        idx = [i for i, v in enumerate(values) if torch.is_tensor(v)]
        host = torch.stack([values[i].double() for i in idx]).cpu().tolist() if idx else []
        out = list(values)
        for i, v in zip(idx, host, strict=True):
            out[i] = v
        return [float(v) for v in out]


class FastRunner(_FastBase):
    """The fast pipeline, every layer trained (the chapter's run)."""

    def __init__(self, net, plan):
        super().__init__(net, plan, list(net.parameters()))
        names = self._exit.enter_context(
            bf16_guard(net, plan.image_size, self.device, self.precision)
        )
        if names:
            self.facts["bf16_fp32_layers"] = names
        self.trainer = self.optimizer(net)
        self.model = _maybe_compile(self.parallel(net), plan.pipeline.compile)

    def train_epoch(self, epoch):
        self.model.train()
        yield from self.steps((self.model, X, y, True) for X, y, _ in self.data.train_batches())

    def evaluate(self):
        return evaluate_fast(self.model, self.data, self.precision)


def evaluate_fast(model, data, precision) -> tuple[int, int]:
    """``(correct, total)`` over the fast pipeline's (book-identical) test batches."""
    device = data.device
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=device)
    n = 0
    with torch.no_grad(), autocast(device, precision):
        for X, y in data.test_batches():
            correct += (model(X).argmax(dim=1) == y).sum()
            n += y.shape[0]
    return int(correct), n


def extract_features(net, batches, device, precision, compile=False):
    """Backbone features (the head's input, float32, one row per image) of every
    batch in `batches`, in order; the backbone runs in eval mode."""
    feats = []
    net.eval()
    with headless(net) as body, torch.no_grad(), autocast(device, precision):
        body = _maybe_compile(body, compile)
        for X in batches:
            feats.append(body(X).float().flatten(1))
    return torch.cat(feats) if feats else torch.zeros(0, device=device)


class FastFrozenRunner(_FastBase):
    """Exercise 3 with the fast pipeline: the backbone's features once for the test
    set and once per augmentation pass for the training set (pass ``epoch %
    feature_passes``, its crops drawn from the seed of epoch p, so a resumed run
    computes the same ones); the head trains on them in the book's batches."""

    def __init__(self, net, plan):
        super().__init__(net, plan, head_params(net))
        self._exit.enter_context(frozen_backbone(net))
        self.head = getattr(net, HEAD)
        self.trainer = self.optimizer(self.head)
        self.head_model = self.parallel(self.head)  # DDP across workers, if any
        self.passes, self.compile = plan.pipeline.feature_passes, plan.pipeline.compile
        self.cached, self.test_f, self.test_y = {}, None, None

    def _features(self, batches):
        return extract_features(self.net, batches, self.device, self.precision, self.compile)

    def _pass(self, p):
        if p not in self.cached:
            self.data.set_epoch(p)
            # every image's features (a worker's steps take any of them)
            batches = self.data.train_batches(False, sharded=False)
            self.cached[p] = self._features(X for X, _, _ in batches)
        return self.cached[p]

    def train_epoch(self, epoch):
        start = time.perf_counter()  # feature passes count as training time
        if self.test_f is None:
            test = list(self.data.test_batches())
            self.test_f = self._features(X for X, _ in test)
            self.test_y = torch.cat([y for _, y in test]) if test else None
        feats = self._pass(epoch % self.passes)
        data = self.data
        data.set_epoch(epoch)
        shard_of = (data.world, data.rank)

        def batches():
            for b, _ in epoch_draws(
                data.rng, data.num_train, data.batch_size, None, True, shard_of
            ):
                bd = torch.from_numpy(b).to(self.device, non_blocking=True)
                yield self.head_model, feats[bd], data.y_train[bd], False

        yield from self.steps(batches(), start)

    def evaluate(self):
        if self.test_y is None:
            return 0, 0
        with torch.no_grad():
            correct = int((self.head(self.test_f).argmax(dim=1) == self.test_y).sum())
        return correct, len(self.test_y)


def make_runner(net, plan, batches=None) -> Runner:
    """The runner for `plan`'s pipeline: book (full or frozen), fixed batches, fast
    (full or frozen). `batches`: ``(train_iter, test_iter)`` to run the book's loop on
    instead of the plan's data (the parity tests' own batches)."""
    if plan.pipeline.name == "fast":
        return FastFrozenRunner(net, plan) if plan.freeze else FastRunner(net, plan)
    return BookRunner(net, plan, batches)
