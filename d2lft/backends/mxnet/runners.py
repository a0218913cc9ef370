"""The MXNet tab's training steps behind the engine's :class:`Runner` interface.

All runners do the chapter's step: a hybridized net, SGD with weight decay, the head's
``lr_mult`` (10x), ``SoftmaxCrossEntropyLoss`` and ``trainer.step(batch size)`` with
each batch's own size (so the gradient is the batch *mean*; see
`d2lft.equivalent_sgd`), batches split over the devices with ``split_and_load``.

- :class:`BookRunner`: the book's loaders (or the shared fixed batches); with
  `freeze` only the head is recorded and updated, the backbone in prediction mode.
- :class:`FastRunner`: the fast pipeline (:mod:`.fastdata`), hybridized with
  ``static_alloc``/``static_shape``; losses and accuracies stay in NDArrays and are
  read once per epoch, so MXNet's engine prepares the next batch meanwhile.
- :class:`FastFrozenRunner`: the backbone's features once for the test set and once
  per augmentation pass for the training set; the head trains on them.
"""

from __future__ import annotations

import contextlib
import math
import os
import time

import mxnet as mx
from mxnet import autograd, gluon

from ...data.crops import epoch_draws
from ...engine.dist import global_batch_size
from ...engine.loop import Runner, Step, book_batches, set_fixed_epoch
from .data import make_loaders
from .fastdata import FastData
from .runtime import (
    all_devices,
    count_params,
    features,
    frozen_backbone,
    head_multiplier,
    resolve_precision,
    split,
    to_nd,
)


def _correct(pred, y):
    """Correct predictions of a batch part, in the prediction's dtype (float32 or 64)."""
    return (pred.argmax(axis=1) == y.astype(pred.dtype)).sum()


def evaluate_counts(net, data_iter, devices=None) -> tuple[int, int]:
    """``(correct, total)`` of `net` over `data_iter` (prediction mode), split over
    `devices`."""
    devices = devices or all_devices()
    correct = total = 0
    for X, y in data_iter:
        for Xi, yi in zip(*split(X, y, devices), strict=True):
            correct += int(_correct(net(Xi), yi).asscalar())
        total += y.shape[0]
    return correct, total


def evaluate_accuracy(net, data_iter, devices=None) -> float:
    """Accuracy of `net` over `data_iter` (prediction mode), split over `devices`."""
    correct, total = evaluate_counts(net, data_iter, devices)
    return correct / max(total, 1)


class _MXRunner(Runner):
    """What every MXNet runner shares: devices, the trainer, the multipliers."""

    def __init__(self, net, plan, trained, hybridize):
        super().__init__()
        self.net, self.plan, self.lr = net, plan, plan.learning_rate
        self.devices = list(plan.run.devices) if plan.run.devices else all_devices()
        self.world = plan.world_size
        if plan.job is not None:  # a distributed worker: one device, its own
            local = int(os.environ.get("LOCAL_RANK", plan.rank))
            self.devices = [
                mx.gpu(local % mx.context.num_gpus()) if mx.context.num_gpus() else mx.cpu()
            ]
        params = net.collect_params()
        params.reset_ctx(self.devices)
        net.hybridize(**hybridize)
        self.loss = gluon.loss.SoftmaxCrossEntropyLoss()
        self.trained_params, self.total_params = count_params(trained), count_params(params)
        self._exit = contextlib.ExitStack()
        self._exit.enter_context(head_multiplier(params, plan.param_group))
        # a distributed job sums the workers' gradients on the parameter servers and
        # every worker applies the same update itself (the servers keep no optimizer);
        # one process over several devices sums them with kvstore='device' (the book's)
        kv = (
            {"kvstore": plan.job.kv, "update_on_kvstore": False}
            if plan.job
            else {"kvstore": "device"}
        )
        self.trainer = gluon.Trainer(
            trained, "sgd", {"learning_rate": self.lr, "wd": plan.run.weight_decay}, **kv
        )
        if plan.job:
            self._start_kvstore()
        self.facts = {"precision_used": "fp32"}

    def _start_kvstore(self):
        """Set up a distributed job's kvstore now and wait until every parameter holds
        rank 0's values. Gluon's Trainer would do it inside its first ``step``: rank 0
        pushes each parameter and every worker pulls it back (``kvstore.broadcast``),
        but nothing orders those pulls before the gradient pushes that follow on the
        same keys, and a ``dist_sync`` server answers a pull with what it holds at that
        moment: once every worker has pushed a key's gradient, the *summed gradient*.
        A pull served late (timing-dependent; seen with ResNet-18) silently replaced a
        worker's weights by that sum, and the workers then trained apart."""
        trainer = self.trainer
        trainer._init_kvstore()
        trainer._init_params()  # (d2lft's nets have no deferred parameters left)
        mx.nd.waitall()  # the pulls have landed: no gradient push can overtake them

    def parts_step(self, module, X, y, inputs=None, n=None):
        """One step over the device parts of (X, y): record `module` on `inputs`
        (default the parts of X), backward, ``trainer.step(size)`` with the batch's own
        size, or `n` (a distributed step: the global batch's, as the servers sum every
        worker's gradient); returns (losses, predictions, label parts)."""
        Xs, ys = split(X, y, self.devices)
        inputs = Xs if inputs is None else inputs(Xs)
        with autograd.record():
            preds = [module(Xi) for Xi in inputs]
            ls = [self.loss(p, yi) for p, yi in zip(preds, ys, strict=True)]
        for part in ls:
            part.backward()
        self.trainer.step(y.shape[0] if n is None else n)
        return ls, preds, ys

    def share_running_stats(self):
        """In a distributed job, every worker takes rank 0's BatchNorm running
        statistics before evaluating (each worker's own follow its shards), so the
        job's test accuracy is that of the net rank 0 saves (as DDP's buffer broadcast
        does for torch)."""
        if self.world == 1:
            return
        aux = [
            p.data(self.devices[0])
            for name, p in sorted(self.net.collect_params().items())
            if name.endswith(("running_mean", "running_var"))
        ]
        self.plan.job.broadcast_arrays(aux)

    def global_size(self, step) -> int | None:
        """The global batch size of step `step` of an epoch in a distributed run."""
        if self.world == 1:
            return None
        return global_batch_size(self.num_train, self.plan.batch_size, step)

    def close(self):
        self._exit.close()


class BookRunner(_MXRunner):
    """The book's loop: its loaders (or `FixedBatches`), every loss read per batch."""

    def __init__(self, net, plan, batches=None):
        freeze = plan.freeze
        trained = net.output.collect_params() if freeze else net.collect_params()
        super().__init__(
            net, plan, trained, {"static_alloc": True, "static_shape": True} if freeze else {}
        )
        self.freeze = freeze
        self.train_iter, self.test_iter = book_batches(plan, make_loaders, to_nd, batches)
        if freeze:
            self._exit.enter_context(frozen_backbone(net))
        self.num_batches = len(self.train_iter)
        dataset = getattr(self.train_iter, "_dataset", None)
        self.num_train = len(
            dataset if dataset is not None else getattr(self.train_iter, "samples", ())
        )

    def set_epoch(self, epoch, seed):
        set_fixed_epoch(self.train_iter, epoch)
        # Gluon's loader shuffles with numpy's global generator: seeded by the loop

    def train_epoch(self, epoch):
        net = self.net
        module, inputs = (
            (net.output, lambda Xs: [features(net, Xi) for Xi in Xs])
            if self.freeze
            else (net, None)
        )
        for k, (X, y) in enumerate(self.train_iter):
            t0 = time.perf_counter()
            ls, preds, ys = self.parts_step(module, X, y, inputs, self.global_size(k))
            batch_loss = sum(float(part.sum().asscalar()) for part in ls)
            correct = sum(int(_correct(p, yi).asscalar()) for p, yi in zip(preds, ys, strict=True))
            yield Step(y.shape[0], batch_loss, correct, time.perf_counter() - t0)

    def evaluate(self):
        self.share_running_stats()
        return evaluate_counts(self.net, self.test_iter, self.devices)


class _FastBase(_MXRunner):
    """The fast pipeline's setup; metrics as device scalars, read once per epoch."""

    sync_each = False

    def __init__(self, net, plan, trained):
        super().__init__(net, plan, trained, {"static_alloc": True, "static_shape": True})
        pipe = plan.pipeline
        resolve_precision(pipe.precision, self.devices[0])
        t0 = time.perf_counter()
        self.data = FastData(
            plan.data_dir,
            plan.image_size,
            plan.batch_size,
            seed=plan.run.seed,
            decode_cache=pipe.decode_cache,
            shard=(plan.world_size, plan.rank),
            on_disk=plan.store_on_disk,
        )
        self.num_train = self.data.num_train
        self.num_batches = math.ceil(self.num_train / plan.batch_size)
        self.facts["data_setup_seconds"] = round(time.perf_counter() - t0, 3)

    def set_epoch(self, epoch, seed):
        self.data.set_epoch(epoch)

    def steps(self, module, batches, start=None, inputs=None):
        """Yield a Step per (X, y) of `batches` (device scalars), timed back to back."""
        ctx = self.devices[0]
        last = time.perf_counter() if start is None else start
        for k, (X, y) in enumerate(batches):
            ls, preds, ys = self.parts_step(module, X, y, inputs, self.global_size(k))
            loss = mx.nd.add_n(*[part.sum().as_in_context(ctx) for part in ls])
            correct = mx.nd.add_n(
                *[_correct(p, yi).as_in_context(ctx) for p, yi in zip(preds, ys, strict=True)]
            )
            now = time.perf_counter()
            yield Step(y.shape[0], loss.astype("float64"), correct.astype("float64"), now - last)
            last = now

    def finish_epoch(self):
        t0 = time.perf_counter()
        mx.nd.waitall()
        return time.perf_counter() - t0

    def to_floats(self, values):
        out = []
        for v in values:
            out.append(float(v.asscalar()) if isinstance(v, mx.nd.NDArray) else float(v))
        return out


class FastRunner(_FastBase):
    """The fast pipeline, every layer trained (the chapter's run)."""

    def __init__(self, net, plan):
        super().__init__(net, plan, net.collect_params())

    def train_epoch(self, epoch):
        yield from self.steps(self.net, self.data.train_batches())

    def evaluate(self):
        self.share_running_stats()
        return evaluate_fast(self.net, self.data, self.devices)


def evaluate_fast(net, data, devices) -> tuple[int, int]:
    """``(correct, total)`` over the fast pipeline's (book-identical) test batches."""
    correct = mx.nd.zeros((1,), ctx=devices[0], dtype="float64")
    n = 0
    for X, y in data.test_batches():
        for Xi, yi in zip(*split(X, y, devices), strict=True):
            correct += _correct(net(Xi), yi).as_in_context(devices[0]).astype("float64")
        n += y.shape[0]
    return int(correct.asscalar()), n


class FastFrozenRunner(_FastBase):
    """Backbone features once for the test set and once per augmentation pass for the
    training set (pass ``epoch % feature_passes``); the head trains on them."""

    def __init__(self, net, plan):
        super().__init__(net, plan, net.output.collect_params())
        self._exit.enter_context(frozen_backbone(net))
        self.ctx = self.devices[0]
        self.passes = plan.pipeline.feature_passes
        self.cached, self.test_f, self.test_y = {}, None, None
        self.labels = mx.nd.array(self.data.train_labels, ctx=self.ctx, dtype="int32")

    def _features(self, batches):
        return mx.nd.concat(
            *[features(self.net, X.as_in_context(self.ctx)) for X in batches], dim=0
        )

    def _pass(self, p):
        if p not in self.cached:
            self.data.set_epoch(p)
            # every image's features (a worker's steps take any of them)
            batches = self.data.train_batches(False, sharded=False)
            self.cached[p] = self._features(X for X, _ in batches)
        return self.cached[p]

    def train_epoch(self, epoch):
        start = time.perf_counter()  # feature passes count as training time
        data = self.data
        if self.test_f is None:
            test = list(data.test_batches())
            self.test_f = self._features(X for X, _ in test) if test else None
            self.test_y = mx.nd.concat(*[y for _, y in test], dim=0) if test else None
        feats = self._pass(epoch % self.passes)
        data.set_epoch(epoch)
        shard_of = (data.world, data.rank)

        def batches():
            for b, _ in epoch_draws(
                data.rng, data.num_train, data.batch_size, None, True, shard_of
            ):
                bi = mx.nd.array(b, ctx=self.ctx, dtype="int32")
                yield mx.nd.take(feats, bi), mx.nd.take(self.labels, bi)

        yield from self.steps(self.net.output, batches(), start)

    def evaluate(self):
        if self.test_y is None:
            return 0, 0
        out = self.net.output(self.test_f)
        test_y = self.test_y.as_in_context(self.ctx).astype(out.dtype)
        return int((out.argmax(axis=1) == test_y).sum().asscalar()), test_y.shape[0]


def make_runner(net, plan, batches=None) -> Runner:
    """The runner for `plan`'s pipeline: book (full or frozen), fixed batches, fast
    (full or frozen). `batches`: ``(train_iter, test_iter)`` to run the book's loop on
    instead of the plan's data (the parity tests' own batches)."""
    if plan.pipeline.name == "fast":
        return FastFrozenRunner(net, plan) if plan.freeze else FastRunner(net, plan)
    return BookRunner(net, plan, batches)
