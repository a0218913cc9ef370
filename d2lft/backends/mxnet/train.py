"""The chapter's training, MXNet side (the book's `train_ch13`, made safe for any
number of batches and on CPU-only machines)."""
from __future__ import annotations

import random
import time

import mxnet as mx
import numpy as np
from mxnet import autograd, gluon

from ...history import History
from ...checkpoint import epoch_seed, resume_into
from ...training import TrainingDiverged, check_finite, end_epoch, finish_run, Reporter
from .data import make_loaders

WEIGHT_DECAY = 0.001


def all_devices():
    """All GPUs, else the CPU."""
    n = mx.context.num_gpus()
    return [mx.gpu(i) for i in range(n)] or [mx.cpu()]


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    seed_framework(seed)


def seed_framework(seed):
    """Seed the framework's own global generator (initialisation, its random ops)."""
    mx.random.seed(seed)


def reseed_epoch(seed, epoch, train_iter=None):
    """Seed epoch `epoch`'s shuffling and augmentation from (seed, epoch) alone, so a
    run resumed from a checkpoint continues exactly as the uninterrupted run (Gluon's
    loader shuffles with numpy's global generator)."""
    seed_everything(epoch_seed(seed, epoch))


def _to_nd(a):
    """A numpy batch from `d2lft.deterministic` as an NDArray (labels as int32)."""
    return mx.nd.array(a, dtype="int32" if a.dtype.kind in "iu" else a.dtype)


def _split(X, y, devices):
    return (gluon.utils.split_and_load(X, devices, even_split=False),
            gluon.utils.split_and_load(y, devices, even_split=False))


def evaluate_accuracy(net, data_iter, devices=None):
    """Accuracy of `net` over `data_iter` (prediction mode), split over `devices`."""
    devices = devices or all_devices()
    correct = total = 0
    for X, y in data_iter:
        Xs, ys = _split(X, y, devices)
        for Xi, yi in zip(Xs, ys):
            pred = net(Xi)  # labels compared in the prediction's dtype (float32 or float64)
            correct += int((pred.argmax(axis=1) == yi.astype(pred.dtype)).sum().asscalar())
        total += y.shape[0]
    return correct / max(total, 1)


def train_fine_tuning(net, learning_rate, batch_size=128, num_epochs=5, param_group=True, *,
                      data_dir, image_size=224, devices=None, seed=None, num_workers=None,
                      verbose=True, train_iter=None, test_iter=None, hybridize=True,
                      weight_decay=WEIGHT_DECAY, deterministic=False, checkpoint_dir=None,
                      resume=None, pipeline="book", freeze=False, precision="auto",
                      compile=False, decode_cache="memory", feature_passes=1):
    """The MXNet tab's `train_fine_tuning` + `train_ch13`: hybridized net, SGD with
    weight decay 0.001, the head's `lr_mult` (10x), `SoftmaxCrossEntropyLoss` and
    `trainer.step(batch_size)` (so the gradient is the batch *mean*; see
    `d2lft.equivalent_sgd`). `param_group=False` trains every layer at one rate.
    `deterministic=True`: the batches of `d2lft.deterministic.fixed_loaders` (no
    augmentation, shared decoding, numpy shuffle from `seed`), the same in both
    backends. `checkpoint_dir`: write a checkpoint there after every epoch; `resume`:
    a checkpoint to continue from (see `d2lft.checkpoint`).
    `pipeline='fast'` and `freeze=True` run in `.fast` (see there)."""
    from .fast import RunMemory, check_options, count_params
    check_options(pipeline, freeze, precision, feature_passes, deterministic, compile)
    if pipeline == "fast" or freeze:
        from .fast import train_fast
        return train_fast(net, learning_rate, batch_size, num_epochs, param_group,
                          data_dir=data_dir, image_size=image_size, devices=devices, seed=seed,
                          num_workers=num_workers, verbose=verbose, weight_decay=weight_decay,
                          checkpoint_dir=checkpoint_dir, resume=resume, pipeline=pipeline,
                          freeze=freeze, precision=precision, compile=compile,
                          decode_cache=decode_cache, feature_passes=feature_passes)
    if seed is not None:
        seed_everything(seed)
    devices = list(devices) if devices else all_devices()
    if (train_iter is None or test_iter is None) and deterministic:
        from ...deterministic import fixed_loaders
        train_iter, test_iter = fixed_loaders(data_dir, batch_size, image_size, seed,
                                              convert=_to_nd)
    if train_iter is None or test_iter is None:
        train_iter, test_iter = make_loaders(data_dir, batch_size, image_size,
                                             num_workers=num_workers, seed=seed)
    params = net.collect_params()
    params.reset_ctx(devices)
    if hybridize:
        net.hybridize()
    loss = gluon.loss.SoftmaxCrossEntropyLoss()
    saved_mult = {name: p.lr_mult for name, p in params.items()}
    if not param_group:  # Gluon's optimizer reads lr_mult at every step: 1 until the end
        params.setattr("lr_mult", 1.0)
    trainer = gluon.Trainer(params, "sgd", {"learning_rate": learning_rate,
                                            "wd": weight_decay})
    history = History(backend="mxnet", devices=[str(d) for d in devices],
                      config=dict(learning_rate=learning_rate, batch_size=batch_size,
                                  num_epochs=num_epochs, param_group=param_group,
                                  image_size=image_size, seed=seed,
                                  weight_decay=weight_decay, loss_reduction="mean",
                                  deterministic=bool(deterministic)))
    start_epoch = resume_into(net, resume, history) if resume is not None else 0
    resumed_examples = history.num_examples
    report = Reporter(history, num_epochs, verbose, batches=train_iter)
    history.trained_params = count_params(params)
    history.config["pipeline"] = "book"
    memory = RunMemory(devices).start()
    start = time.perf_counter()
    train_time = 0.0
    try:
        for epoch in range(start_epoch, num_epochs):
            if seed is not None:
                reseed_epoch(seed, epoch, train_iter)
            loss_sum, correct, n = 0.0, 0, 0
            for i, (X, y) in enumerate(train_iter):
                t0 = time.perf_counter()
                Xs, ys = _split(X, y, devices)
                with autograd.record():
                    preds = [net(Xi) for Xi in Xs]
                    ls = [loss(p, yi) for p, yi in zip(preds, ys)]
                for l in ls:
                    l.backward()
                trainer.step(y.shape[0])
                batch_loss = sum(float(l.sum().asscalar()) for l in ls)
                correct += sum(int((p.argmax(axis=1) == yi.astype(p.dtype)).sum().asscalar())
                               for p, yi in zip(preds, ys))
                check_finite(batch_loss, epoch, i, learning_rate)
                loss_sum += batch_loss
                n += y.shape[0]
                train_time += time.perf_counter() - t0
                report.batch(epoch, i)
            test_acc = evaluate_accuracy(net, test_iter, devices)
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


__all__ = ["train_fine_tuning", "all_devices", "evaluate_accuracy", "TrainingDiverged"]
