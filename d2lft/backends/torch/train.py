"""The chapter's training, PyTorch side (the book's `train_ch13`, made safe on CPU)."""
from __future__ import annotations

import random
import time

import numpy as np
import torch
from torch import nn

from ...history import History
from ...checkpoint import epoch_seed, resume_into
from ...training import TrainingDiverged, check_finite, end_epoch, finish_run, Reporter
from .data import make_loaders

WEIGHT_DECAY = 0.001


def all_devices():
    """All GPUs, else the CPU (the book's `try_all_gpus` returns [] on a CPU machine,
    and its `train_ch13` then fails with IndexError)."""
    n = torch.cuda.device_count()
    return [torch.device(f"cuda:{i}") for i in range(n)] or [torch.device("cpu")]


def param_groups(net, learning_rate, param_group=True):
    """The chapter's optimizer parameter groups: parameters whose `lr_mult` is set
    (the new head) get `learning_rate * lr_mult`, all others `learning_rate`."""
    if not param_group:
        return [{"params": list(net.parameters()), "lr": learning_rate}]
    groups = {}
    for p in net.parameters():
        groups.setdefault(getattr(p, "lr_mult", 1), []).append(p)
    return [{"params": ps, "lr": learning_rate * mult} for mult, ps in sorted(groups.items())]


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    seed_framework(seed)


def seed_framework(seed):
    """Seed the framework's own global generator (initialisation, its random ops)."""
    torch.manual_seed(seed)


def reseed_epoch(seed, epoch, train_iter):
    """Seed epoch `epoch`'s shuffling and augmentation from (seed, epoch) alone, so a
    run resumed from a checkpoint continues exactly as the uninterrupted run."""
    s = epoch_seed(seed, epoch)
    seed_everything(s)
    generator = getattr(train_iter, "generator", None)
    if generator is not None:
        generator.manual_seed(s)


def evaluate_accuracy(net, data_iter, device=None):
    """Accuracy of `net` over `data_iter` (eval mode, no gradients)."""
    device = device or next(net.parameters()).device
    net.eval()
    correct = total = 0
    with torch.no_grad():
        for X, y in data_iter:
            X, y = X.to(device), y.to(device)
            correct += (net(X).argmax(dim=1) == y).sum().item()
            total += y.numel()
    return correct / max(total, 1)


def train_fine_tuning(net, learning_rate, batch_size=128, num_epochs=5, param_group=True, *,
                      data_dir, image_size=224, devices=None, seed=None, num_workers=None,
                      verbose=True, train_iter=None, test_iter=None,
                      weight_decay=WEIGHT_DECAY, deterministic=False, checkpoint_dir=None,
                      resume=None, pipeline="book", freeze=False, precision="auto",
                      compile=False, decode_cache="memory", feature_passes=1, augment=None):
    """The PyTorch tab's `train_fine_tuning` + `train_ch13`: SGD with weight decay
    0.001, 10x learning rate on parameters marked `lr_mult`, per-example losses
    (`reduction='none'`) summed before `backward()` (so the gradient is the batch
    *sum*; see `d2lft.equivalent_sgd`). `deterministic=True`: the batches of
    `d2lft.deterministic.fixed_loaders` (no augmentation, shared decoding, numpy
    shuffle from `seed`), the same in both backends. `checkpoint_dir`: write a
    checkpoint there after every epoch; `resume`: a checkpoint to continue from (see
    `d2lft.checkpoint`). `pipeline='fast'` and `freeze=True` run in `.fast` (see there)."""
    from .fast import RunMemory, check_options, count_params
    check_options(pipeline, freeze, precision, feature_passes, deterministic, compile)
    if pipeline == "fast" or freeze:
        from .fast import train_fast
        return train_fast(net, learning_rate, batch_size, num_epochs, param_group,
                          data_dir=data_dir, image_size=image_size, devices=devices, seed=seed,
                          num_workers=num_workers, verbose=verbose, weight_decay=weight_decay,
                          checkpoint_dir=checkpoint_dir, resume=resume, pipeline=pipeline,
                          freeze=freeze, precision=precision, compile=compile,
                          decode_cache=decode_cache, feature_passes=feature_passes,
                          augment=augment)
    if seed is not None:
        seed_everything(seed)
    devices = list(devices) if devices else all_devices()
    if (train_iter is None or test_iter is None) and deterministic:
        from ...deterministic import fixed_loaders
        train_iter, test_iter = fixed_loaders(data_dir, batch_size, image_size, seed,
                                              convert=torch.from_numpy)
    if train_iter is None or test_iter is None:
        train_iter, test_iter = make_loaders(data_dir, batch_size, image_size,
                                             num_workers=num_workers, seed=seed)
    loss = nn.CrossEntropyLoss(reduction="none")
    trainer = torch.optim.SGD(param_groups(net, learning_rate, param_group), lr=learning_rate,
                              weight_decay=weight_decay)
    model = nn.DataParallel(net, device_ids=devices) if len(devices) > 1 else net
    model.to(devices[0])
    history = History(backend="torch", devices=[str(d) for d in devices],
                      config=dict(learning_rate=learning_rate, batch_size=batch_size,
                                  num_epochs=num_epochs, param_group=param_group,
                                  image_size=image_size, seed=seed,
                                  weight_decay=weight_decay, loss_reduction="sum",
                                  deterministic=bool(deterministic)))
    start_epoch = resume_into(net, resume, history) if resume is not None else 0
    resumed_examples = history.num_examples
    report = Reporter(history, num_epochs, verbose, batches=train_iter)
    history.trained_params = count_params(net.parameters())
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
                X, y = X.to(devices[0]), y.to(devices[0])
                model.train()
                trainer.zero_grad()
                pred = model(X)
                l = loss(pred, y)
                l.sum().backward()
                trainer.step()
                with torch.no_grad():
                    batch_loss = float(l.sum())
                    correct += (pred.argmax(dim=1) == y).sum().item()
                check_finite(batch_loss, epoch, i, learning_rate)
                loss_sum += batch_loss
                n += y.numel()
                train_time += time.perf_counter() - t0
                report.batch(epoch, i)
            test_acc = evaluate_accuracy(model, test_iter, devices[0])
            end_epoch(history, report, epoch, loss_sum, correct, n, test_acc, net=net,
                      checkpoint_dir=checkpoint_dir)
    except KeyboardInterrupt:
        history.completed = False
        history.stopped_reason = "interrupted (Ctrl-C)"
    return finish_run(history, start=start, train_time=train_time,
                      resumed_examples=resumed_examples, memory=memory, report=report)


__all__ = ["train_fine_tuning", "all_devices", "param_groups", "evaluate_accuracy",
           "TrainingDiverged"]
