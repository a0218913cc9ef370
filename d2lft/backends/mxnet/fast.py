"""The fast pipeline and frozen-feature training (exercise 3), MXNet side.

`train_fine_tuning(..., pipeline='fast')` computes what the MXNet tab computes:

* every image is decoded once (:mod:`d2lft.decode_cache`) instead of once per epoch;
* training crops are drawn as Gluon's ``RandomResizedCrop`` draws them
  (``mx.image.random_size_crop``: 10 tries, then its ``center_crop`` fallback) on each
  image's original size, and resized with the same call (``mx.image.imresize``,
  OpenCV bilinear), so a crop of an image stored at its original size is
  pixel-identical to the book's; flips and normalisation run on the whole batch;
* evaluation batches are the book's test transform (Gluon ``Resize`` to 256/224*s
  square, ``CenterCrop``) computed once per image and kept as uint8: equal to the
  book's batches;
* the network is hybridized with ``static_alloc=True, static_shape=True``; losses and
  accuracies stay in NDArrays and are read once per epoch, so MXNet's asynchronous
  engine prepares the next batch while the current one computes.

MXNet 1.9's bf16 (AMP) converts networks for inference only, so training stays in
fp32 (``precision='auto'`` means fp32 here). `freeze=True` trains only the head, the
backbone in prediction mode; with ``pipeline='fast'`` its features are computed once
for the test set and once per augmentation pass for the training set.
"""
from __future__ import annotations

import contextlib
import os
import time

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon
from mxnet.gluon.data.vision import transforms

from ..._memory import HostPeak
from ...data import load_rgb
from ...decode_cache import (run_seed as _run_seed, _fallback, epoch_batches, get_cache, sample_resized_crops,
                             train_store)
from ...history import History
from ...training import (Reporter, TrainingDiverged, check_finite, check_speed_options,
                         end_epoch, finish_run)
from .data import MEAN, STD, image_folder, make_loaders, test_resize

MIN_AREA = 32  # images smaller than this take Gluon's fallback (see data.RandomResizedCrop)


def check_options(pipeline, freeze, precision, feature_passes, deterministic=False,
                  compile=False):
    check_speed_options(pipeline, freeze, precision, feature_passes, deterministic, compile)
    if precision == "bf16":
        raise ValueError("the mxnet backend trains in fp32: MXNet 1.9's bf16 AMP converts "
                         "networks for inference only; use precision='auto' or 'fp32'")
    if compile:
        raise ValueError("compile=True is torch's torch.compile; the mxnet backend's fast "
                         "pipeline hybridizes with static_alloc/static_shape instead")


class RunMemory:
    """Peak host memory of a run (MXNet reports no peak device memory: NaN)."""

    def __init__(self, devices):
        self.host = HostPeak()

    def start(self):
        self.host.start()
        return self

    def finish(self, history):
        self.host.stop()
        history.peak_host_mb = self.host.peak_mb
        return history


def count_params(params) -> int:
    return int(sum(int(np.prod(p.shape)) for p in params.values()))


# ------------------------------------------------------------------ data

def split_samples(folder):
    """(paths, labels) of one split folder, in the book dataset's order."""
    ds = image_folder(folder)
    return [p for p, _ in ds.items], np.array([t for _, t in ds.items], dtype=np.int32)


def book_test_uint8(path, image_size):
    """The MXNet tab's test transform up to ToTensor, as uint8 HxWx3: Gluon's own
    ``Resize(s)`` and ``CenterCrop`` on the dataset's decoded image."""
    arr = np.asarray(load_rgb(path))
    tf = transforms.Compose([transforms.Resize(test_resize(image_size)),
                             transforms.CenterCrop(image_size)])
    out = tf(mx.nd.array(arr, dtype="uint8")).asnumpy()
    return np.ascontiguousarray(out, dtype=np.uint8), arr.shape[:2]


def test_store(paths, image_size, decode_cache="memory"):
    # MXNet's frontend is not thread-safe: decode in this thread
    return get_cache(decode_cache).load(paths, f"mxnet-test-{image_size}",
                                        lambda p: book_test_uint8(p, image_size),
                                        threads=False)


def normalize_batch(x_u8, mean, std):
    """uint8 NHWC NDArray -> float32 NCHW, as ToTensor + Normalize compute it."""
    x = x_u8.astype("float32") / 255.0
    return ((x - mean) / std).transpose((0, 3, 1, 2))


def sample_crops(rng, heights, widths, size):
    """Gluon RandomResizedCrop's boxes (top, left, h, w) for a batch."""
    top, left, h, w = sample_resized_crops(rng, heights, widths, fallback="mxnet",
                                           out_size=size)
    H, W = np.asarray(heights), np.asarray(widths)
    tiny = H * W < MIN_AREA
    if tiny.any():
        fh, fw = _fallback(H[tiny], W[tiny], None, "mxnet", size)
        h[tiny], w[tiny] = fh, fw
        top[tiny], left[tiny] = (H[tiny] - fh) // 2, (W[tiny] - fw) // 2
    return top, left, h, w


def crop_resize(store, idx, top, left, h, w, flips, size):
    """Per sample: the crop (mapped into the stored image, rounded to whole pixels
    when the image is stored smaller) resized by ``mx.image.imresize`` (bilinear),
    then flipped; returns a uint8 (B, size, size, 3) NDArray."""
    outs = []
    for k, i in enumerate(idx):
        img = store.image(int(i))
        (sh, sw), (oh, ow) = store.shapes[i], store.orig[i]
        if sh == oh and sw == ow:
            y0, x0, y1, x1 = int(top[k]), int(left[k]), int(top[k] + h[k]), int(left[k] + w[k])
        else:
            fy, fx = sh / oh, sw / ow
            y0 = min(int(round(top[k] * fy)), sh - 1)
            x0 = min(int(round(left[k] * fx)), sw - 1)
            y1 = max(min(int(round((top[k] + h[k]) * fy)), sh), y0 + 1)
            x1 = max(min(int(round((left[k] + w[k]) * fx)), sw), x0 + 1)
        crop = mx.nd.array(img[y0:y1, x0:x1], dtype="uint8")
        if crop.shape[0] != size or crop.shape[1] != size:
            crop = mx.image.imresize(crop, size, size, interp=1)
        outs.append(mx.nd.flip(crop, axis=1) if flips[k] else crop)
    return mx.nd.stack(*outs)


class FastData:
    """Decoded train and test stores and the batches of the fast pipeline."""

    def __init__(self, data_dir, image_size, batch_size, seed=None, decode_cache="memory"):
        self.image_size, self.batch_size, self.seed = image_size, batch_size, seed
        self.rng = np.random.default_rng(_run_seed(seed))
        train_paths, self.train_labels = split_samples(os.path.join(data_dir, "train"))
        test_paths, self.test_labels = split_samples(os.path.join(data_dir, "test"))
        self.train = train_store(train_paths, image_size, decode_cache)
        self.test = test_store(test_paths, image_size, decode_cache)
        self.test_u8 = self.test.stack()
        self.mean = mx.nd.array(MEAN).reshape((1, 1, 1, 3))
        self.std = mx.nd.array(STD).reshape((1, 1, 1, 3))

    def set_epoch(self, epoch):
        """Draw epoch `epoch`'s shuffle and crops from (seed, epoch) alone."""
        if self.seed is not None:
            from ...checkpoint import epoch_seed
            self.rng = np.random.default_rng(epoch_seed(self.seed, epoch))

    @property
    def num_train(self):
        return len(self.train_labels)

    def train_batches(self, shuffle=True):
        """One epoch of (X float32 NCHW NDArray, y int32 NDArray)."""
        for b in epoch_batches(self.rng, self.num_train, self.batch_size, shuffle):
            o = self.train.orig[b]
            top, left, h, w = sample_crops(self.rng, o[:, 0], o[:, 1], self.image_size)
            flips = self.rng.random(len(b)) < 0.5
            u8 = crop_resize(self.train, b, top, left, h, w, flips, self.image_size)
            yield (normalize_batch(u8, self.mean, self.std),
                   mx.nd.array(self.train_labels[b], dtype="int32"))

    def test_batches(self):
        for s in range(0, len(self.test_labels), self.batch_size):
            u8 = mx.nd.array(self.test_u8[s:s + self.batch_size], dtype="uint8")
            yield (normalize_batch(u8, self.mean, self.std),
                   mx.nd.array(self.test_labels[s:s + self.batch_size], dtype="int32"))


# ------------------------------------------------------------------ training

def _split(X, y, devices):
    return (gluon.utils.split_and_load(X, devices, even_split=False),
            gluon.utils.split_and_load(y, devices, even_split=False))


def _check_losses(losses, epoch, learning_rate):
    """The first non-finite per-batch loss of an epoch (one read per epoch)."""
    if not losses:
        return
    vals = mx.nd.concat(*[l.reshape((1,)).as_in_context(mx.cpu()) for l in losses],
                        dim=0).asnumpy()
    for i, v in enumerate(vals):
        check_finite(float(v), epoch, i, learning_rate)


@contextlib.contextmanager
def frozen_backbone(net):
    """Backbone parameters get no gradient (grad_req 'null'), restored afterwards."""
    params = list(net.features.collect_params().values())
    saved = [p.grad_req for p in params]
    for p in params:
        p.grad_req = "null"
    try:
        yield
    finally:
        for p, r in zip(params, saved):
            p.grad_req = r


def features(net, X):
    """The backbone's output (the head's input) as (B, C), in prediction mode."""
    f = net.features(X)
    return f.reshape((f.shape[0], -1))


def train_fast(net, learning_rate, batch_size=128, num_epochs=5, param_group=True, *,
               data_dir, image_size=224, devices=None, seed=None, num_workers=None,
               verbose=True, weight_decay=0.001, deterministic=False, checkpoint_dir=None,
               resume=None, pipeline="fast", freeze=False, precision="auto", compile=False,
               decode_cache="memory", feature_passes=1):
    """`train_fine_tuning` for ``pipeline='fast'`` and for ``freeze=True``."""
    from ...checkpoint import resume_into
    from .train import all_devices, reseed_epoch, seed_everything
    check_options(pipeline, freeze, precision, feature_passes, deterministic, compile)
    if seed is not None:
        seed_everything(seed)
    devices = list(devices) if devices else all_devices()
    params = net.collect_params()
    params.reset_ctx(devices)
    trained = net.output.collect_params() if freeze else params
    config = dict(learning_rate=learning_rate, batch_size=batch_size, num_epochs=num_epochs,
                  param_group=param_group, image_size=image_size, seed=seed,
                  weight_decay=weight_decay, loss_reduction="mean", deterministic=False,
                  pipeline=pipeline, freeze=bool(freeze), precision="fp32", compile=False,
                  trained_params=count_params(trained), total_params=count_params(params))
    if freeze and pipeline == "fast":
        config["feature_passes"] = feature_passes
    history = History(backend="mxnet", devices=[str(d) for d in devices], config=config)
    history.trained_params = config["trained_params"]
    memory = RunMemory(devices).start()
    start = time.perf_counter()
    start_epoch = resume_into(net, resume, history) if resume is not None else 0
    resumed_examples = history.num_examples
    report = Reporter(history, num_epochs, verbose)
    net.hybridize(static_alloc=True, static_shape=True)
    saved_mult = {name: p.lr_mult for name, p in params.items()}
    if not param_group:
        params.setattr("lr_mult", 1.0)
    trainer = gluon.Trainer(trained, "sgd", {"learning_rate": learning_rate,
                                             "wd": weight_decay})
    train_time = 0.0
    try:
        if pipeline == "book":
            run = _BookFrozen(net, trainer, learning_rate, batch_size, data_dir, image_size,
                              devices, seed, num_workers, reseed_epoch)
        else:
            data = FastData(data_dir, image_size, batch_size, seed=seed,
                            decode_cache=decode_cache)
            cls = _FastFrozen if freeze else _FastFull
            run = cls(net, trainer, learning_rate, data, devices, feature_passes)
        with (frozen_backbone(net) if freeze else contextlib.nullcontext()):
            for epoch in range(start_epoch, num_epochs):
                loss_sum, correct, n, test_acc, seconds = run.epoch(epoch)
                train_time += seconds
                end_epoch(history, report, epoch, loss_sum, correct, n, test_acc, net=net,
                          checkpoint_dir=checkpoint_dir)
    except KeyboardInterrupt:
        history.completed = False
        history.stopped_reason = "interrupted (Ctrl-C)"
    finally:
        for name, p in params.items():
            p.lr_mult = saved_mult[name]
    return finish_run(history, start=start, train_time=train_time,
                      resumed_examples=resumed_examples, memory=memory, report=report)


class _FastFull:
    def __init__(self, net, trainer, lr, data, devices, feature_passes):
        self.net, self.trainer, self.lr, self.data, self.devices = net, trainer, lr, data, devices
        self.loss = gluon.loss.SoftmaxCrossEntropyLoss()

    def epoch(self, epoch):
        data, devices = self.data, self.devices
        data.set_epoch(epoch)
        t0 = time.perf_counter()
        loss_sum = mx.nd.zeros((1,), ctx=devices[0], dtype="float64")
        correct = mx.nd.zeros((1,), ctx=devices[0], dtype="float64")
        losses, n = [], 0
        for X, y in data.train_batches():
            Xs, ys = _split(X, y, devices)
            with autograd.record():
                preds = [self.net(Xi) for Xi in Xs]
                ls = [self.loss(p, yi) for p, yi in zip(preds, ys)]
            for l in ls:
                l.backward()
            self.trainer.step(y.shape[0])
            s = mx.nd.add_n(*[l.sum().as_in_context(devices[0]) for l in ls])
            losses.append(s)
            loss_sum += s.astype("float64")
            correct += mx.nd.add_n(*[
                (p.argmax(axis=1) == yi.astype(p.dtype)).sum().as_in_context(devices[0])
                for p, yi in zip(preds, ys)]).astype("float64")
            n += y.shape[0]
        _check_losses(losses, epoch, self.lr)
        loss_total, correct_total = float(loss_sum.asscalar()), int(correct.asscalar())
        seconds = time.perf_counter() - t0
        return loss_total, correct_total, n, evaluate_fast(self.net, data, devices), seconds


def evaluate_fast(net, data, devices):
    """Test accuracy over the fast pipeline's (book-identical) test batches."""
    correct = mx.nd.zeros((1,), ctx=devices[0], dtype="float64")
    n = 0
    for X, y in data.test_batches():
        Xs, ys = _split(X, y, devices)
        for Xi, yi in zip(Xs, ys):
            pred = net(Xi)
            correct += (pred.argmax(axis=1) == yi.astype(pred.dtype)).sum().as_in_context(
                devices[0]).astype("float64")
        n += y.shape[0]
    return int(correct.asscalar()) / max(n, 1)


class _FastFrozen:
    """Backbone features once for the test set and once per augmentation pass for
    the training set (pass ``epoch % feature_passes``); the head trains on them."""

    def __init__(self, net, trainer, lr, data, devices, feature_passes):
        self.net, self.trainer, self.lr, self.data = net, trainer, lr, data
        self.ctx = devices[0]
        self.passes = feature_passes
        self.loss = gluon.loss.SoftmaxCrossEntropyLoss()
        self.cached, self.test_f = {}, None

    def _features(self, batches):
        out = [features(self.net, X.as_in_context(self.ctx)) for X in batches]
        return mx.nd.concat(*out, dim=0)

    def epoch(self, epoch):
        data = self.data
        t0 = time.perf_counter()
        if self.test_f is None:
            self.test_f = self._features(X for X, _ in data.test_batches())
        p = epoch % self.passes
        if p not in self.cached:
            data.set_epoch(p)
            self.cached[p] = self._features(X for X, _ in data.train_batches(shuffle=False))
        feats = self.cached[p]
        data.set_epoch(epoch)
        labels = mx.nd.array(data.train_labels, ctx=self.ctx, dtype="int32")
        loss_sum = mx.nd.zeros((1,), ctx=self.ctx, dtype="float64")
        correct = mx.nd.zeros((1,), ctx=self.ctx, dtype="float64")
        losses, n = [], 0
        for b in epoch_batches(data.rng, data.num_train, data.batch_size):
            bi = mx.nd.array(b, ctx=self.ctx, dtype="int32")
            X, y = mx.nd.take(feats, bi), mx.nd.take(labels, bi)
            with autograd.record():
                pred = self.net.output(X)
                l = self.loss(pred, y)
            l.backward()
            self.trainer.step(len(b))
            s = l.sum()
            losses.append(s)
            loss_sum += s.astype("float64")
            correct += (pred.argmax(axis=1) == y.astype(pred.dtype)).sum().astype("float64")
            n += len(b)
        _check_losses(losses, epoch, self.lr)
        test_correct = 0
        if len(data.test_labels):
            out = self.net.output(self.test_f)
            test_y = mx.nd.array(data.test_labels, ctx=self.ctx).astype(out.dtype)
            test_correct = int((out.argmax(axis=1) == test_y).sum().asscalar())
        loss_total, correct_total = float(loss_sum.asscalar()), int(correct.asscalar())
        seconds = time.perf_counter() - t0
        return (loss_total, correct_total, n, test_correct / max(len(data.test_labels), 1),
                seconds)


class _BookFrozen:
    """Exercise 3 the book's way: every batch from the book's loaders through the
    backbone (prediction mode, no gradient) and the head (recorded), as many times as
    the book's loop would run the whole network."""

    def __init__(self, net, trainer, lr, batch_size, data_dir, image_size, devices, seed,
                 num_workers, reseed_epoch):
        self.net, self.trainer, self.lr, self.devices = net, trainer, lr, devices
        self.seed, self.reseed = seed, reseed_epoch
        self.train_iter, self.test_iter = make_loaders(data_dir, batch_size, image_size,
                                                       num_workers=num_workers, seed=seed)
        self.loss = gluon.loss.SoftmaxCrossEntropyLoss()

    def epoch(self, epoch):
        from .train import evaluate_accuracy
        if self.seed is not None:
            self.reseed(self.seed, epoch, self.train_iter)
        loss_sum, correct, n, seconds = 0.0, 0, 0, 0.0
        for i, (X, y) in enumerate(self.train_iter):
            t0 = time.perf_counter()
            Xs, ys = _split(X, y, self.devices)
            fs = [features(self.net, Xi) for Xi in Xs]
            with autograd.record():
                preds = [self.net.output(f) for f in fs]
                ls = [self.loss(p, yi) for p, yi in zip(preds, ys)]
            for l in ls:
                l.backward()
            self.trainer.step(y.shape[0])
            batch_loss = sum(float(l.sum().asscalar()) for l in ls)
            correct += sum(int((p.argmax(axis=1) == yi.astype(p.dtype)).sum().asscalar())
                           for p, yi in zip(preds, ys))
            check_finite(batch_loss, epoch, i, self.lr)
            loss_sum += batch_loss
            n += y.shape[0]
            seconds += time.perf_counter() - t0
        test_acc = evaluate_accuracy(self.net, self.test_iter, self.devices)
        return loss_sum, correct, n, test_acc, seconds


__all__ = ["train_fast", "FastData", "crop_resize", "sample_crops", "book_test_uint8",
           "normalize_batch", "frozen_backbone", "features", "check_options", "RunMemory",
           "TrainingDiverged"]
