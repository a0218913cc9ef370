"""MXNet's numpy mode (``npx.set_np()``, as every MXNet chapter of the book starts).

MXNet 1.9 has two array worlds: the classic ``mx.nd.NDArray`` and, with numpy
semantics active, ``mx.np.ndarray``; operators of one refuse the other's arrays, and a
Gluon block uses the arrays (and, for convolutions, the operator names) of the mode it
was built in. d2lft's own code is written once, in classic mode. This module lets it
serve a caller in either mode:

* every function of the backend's contract runs in classic mode (:func:`classic`
  switches numpy semantics off and restores the caller's flags afterwards, also on an
  error);
* a network whose parameters are numpy arrays is converted in place to classic
  arrays for the call (the same memory: ``as_nd_ndarray`` shares it) and back to numpy
  arrays afterwards (:func:`convert_net`); for training, the conversion lasts the
  whole run (:class:`ClassicRunner`);
* networks built for a caller in numpy mode are handed back as numpy-mode networks,
  and d2lft's datasets hand out arrays of the mode they are read in.

So ``npx.set_np()`` before ``import d2lft`` (or after) changes nothing but the type of
the arrays a caller gets back.
"""

from __future__ import annotations

import contextlib
import functools

import mxnet as mx
from mxnet import autograd, gluon
from mxnet.util import is_np_array, is_np_shape, np_array, np_shape

from ...engine.loop import Runner

#: Gluon convolution operators: classic name <-> numpy-mode name (a Conv layer keeps the
#: name of the mode it was built in)
_CONV_OPS = {"Convolution": "convolution", "Deconvolution": "deconvolution"}
_CONV_OPS_BACK = {v: k for k, v in _CONV_OPS.items()}


def caller_is_np() -> bool:
    """Whether the calling thread has MXNet's numpy array semantics active."""
    return bool(is_np_array())


@contextlib.contextmanager
def classic():
    """Classic MXNet (numpy array and shape semantics off) inside; the caller's flags
    exactly as they were afterwards."""
    if not is_np_array() and not is_np_shape():
        yield
        return
    with np_array(False), np_shape(False):
        yield


def array_fn():
    """``mx.np.array`` in numpy mode, else ``mx.nd.array`` (for arrays handed out)."""
    return mx.np.array if is_np_array() else mx.nd.array


def _params(block):
    return list(block.collect_params().values())


def net_mode(block) -> bool | None:
    """True when `block`'s parameters are numpy arrays, False when classic, None when
    none is initialised yet."""
    for p in _params(block):
        if p._data is not None:
            return isinstance(p._data[0], mx.np.ndarray)
    return None


def _to(arr, to_np):
    if to_np:
        return arr if isinstance(arr, mx.np.ndarray) else arr.as_np_ndarray()
    return arr.as_nd_ndarray() if isinstance(arr, mx.np.ndarray) else arr


def convert_net(block, to_np: bool):
    """Make `block` (a Gluon block, in place) use numpy arrays (`to_np`) or classic
    ones: each parameter's data and gradient arrays are re-wrapped without copying
    (the same memory), gradients marked again for autograd, the convolution layers'
    operator names switched, and cached graphs and symbols dropped (the next forward
    pass traces again, in the new mode). Returns `block`."""
    ops = _CONV_OPS if to_np else _CONV_OPS_BACK
    for p in _params(block):
        if p._data is not None:
            p._data = [_to(a, to_np) for a in p._data]
        if p._grad is not None:
            p._grad = [_to(g, to_np) for g in p._grad]
            autograd.mark_variables(p._data, p._grad, p.grad_req)
        p._var = None

    def visit(b):
        name = getattr(b, "_op_name", None)
        if name in ops:
            b._op_name = ops[name]
        if isinstance(b, gluon.HybridBlock):
            b._clear_cached_op()

    block.apply(visit)
    return block


def _blocks(args, kwargs):
    return [a for a in (*args, *kwargs.values()) if isinstance(a, gluon.Block)]


@contextlib.contextmanager
def classic_nets(blocks, caller_np: bool):
    """Inside: every block of `blocks` on classic arrays. Afterwards each goes back to
    its own mode: numpy when its parameters were numpy arrays, or when none was
    initialised and the caller is in numpy mode (the mode Gluon would have given them)."""
    targets = []
    for b in blocks:
        mode = net_mode(b)
        target = caller_np if mode is None else mode
        if target or mode:
            convert_net(b, False)
        targets.append((b, target))
    try:
        yield
    finally:
        for b, target in targets:
            if target:
                convert_net(b, True)


def entry(fn):
    """A backend function that serves a caller in either mode: it runs in classic mode
    with the networks among its arguments on classic arrays (given back as they came)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with classic(), classic_nets(_blocks(args, kwargs), caller_is_np()):
            return fn(*args, **kwargs)

    return wrapper


def builder(fn):
    """A network builder that serves a caller in either mode: it builds in classic
    mode and hands the network back in the caller's (numpy arrays in numpy mode)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        caller_np = caller_is_np()
        with classic():
            net = fn(*args, **kwargs)
        return convert_net(net, True) if caller_np else net

    return wrapper


class _ClassicBatches:
    """Batches that a caller gave in its own mode, read in classic mode: numpy-mode
    arrays become classic ones (the same memory)."""

    def __init__(self, batches):
        self.batches = batches

    def __iter__(self):
        for X, y in self.batches:
            yield _to(X, False), _to(y, False)

    def __len__(self):
        return len(self.batches)


class ClassicRunner(Runner):
    """A runner that runs in classic mode whatever the caller's mode (the engine's loop
    and the callbacks stay in the caller's mode): its network on classic arrays from
    construction to :meth:`close`, then given back in its own mode."""

    def __init__(self, make, net, caller_np):
        super().__init__()
        self._nets = classic_nets([net], caller_np)
        with classic():
            self._nets.__enter__()
            try:
                self.inner = make()
            except BaseException:
                self._nets.__exit__(None, None, None)
                raise
        inner = self.inner
        self.sync_each, self.num_batches = inner.sync_each, inner.num_batches
        self.devices = inner.devices
        self.trained_params, self.total_params = inner.trained_params, inner.total_params
        self.facts = inner.facts

    def set_epoch(self, epoch, seed):
        with classic():
            return self.inner.set_epoch(epoch, seed)

    def train_epoch(self, epoch):
        steps = self.inner.train_epoch(epoch)
        try:
            while True:
                with classic():
                    try:
                        step = next(steps)
                    except StopIteration:
                        return
                yield step
        finally:
            with classic():
                steps.close()

    def finish_epoch(self):
        with classic():
            return self.inner.finish_epoch()

    def evaluate(self):
        with classic():
            return self.inner.evaluate()

    def to_floats(self, values):
        with classic():
            return self.inner.to_floats(values)

    def device_peak_mb(self):
        with classic():
            return self.inner.device_peak_mb()

    def close(self):
        try:
            with classic():
                self.inner.close()
        finally:
            self._nets.__exit__(None, None, None)


def runner_entry(make_runner):
    """`make_runner` for a caller in either mode (see :class:`ClassicRunner`); batches
    the caller gives (`train_on_batches`) may be arrays of its mode."""

    @functools.wraps(make_runner)
    def wrapper(net, plan, batches=None):
        if batches is not None:
            batches = tuple(_ClassicBatches(b) for b in batches)
        return ClassicRunner(lambda: make_runner(net, plan, batches), net, caller_is_np())

    return wrapper
