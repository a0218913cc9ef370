"""Importing MXNet 1.9.1 (and GluonCV) safely beside PyTorch 2.x and a new numpy."""

from __future__ import annotations

import contextlib
import os
import sys

import numpy

from ..._sys.threads import mxnet_threads_env

MX_HINT = "pip install -e '.[mxnet]'  (mxnet==1.9.1 with numpy<1.24)"


def import_mxnet():
    """Import mxnet with one OpenMP thread per physical core for MXNet (its own default
    is half the logical processors), keeping torch's CPU thread count as it was (see
    `d2lft._sys.threads`)."""
    if "mxnet" in sys.modules:
        return sys.modules["mxnet"]
    major, minor = (int(x) for x in numpy.__version__.split(".")[:2])
    if (major, minor) >= (1, 24):
        raise ImportError(
            f"MXNet 1.9.1 needs numpy<1.24 but numpy {numpy.__version__} is installed: {MX_HINT}"
        )
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    os.environ.update(mxnet_threads_env())
    try:
        import mxnet
    except ImportError as err:
        raise ImportError(f"the 'mxnet' backend cannot import mxnet ({err}): {MX_HINT}") from err
    if torch is not None:
        torch.set_num_threads(before)
    return mxnet


@contextlib.contextmanager
def _hide_torch():
    saved = {
        k: sys.modules[k] for k in list(sys.modules) if k == "torch" or k.startswith("torch.")
    }
    for k in saved:
        del sys.modules[k]
    sys.modules["torch"] = None  # makes `import torch` raise ImportError
    try:
        yield
    finally:
        del sys.modules["torch"]
        sys.modules.update(saved)


def import_gluoncv():
    """Import GluonCV 0.10.x, whose import raises RuntimeError when torch>=2 is installed.

    GluonCV probes torch to decide whether to offer its torch models; d2lft only uses
    its MXNet side, so torch is hidden from it during the import (and only then).
    """
    if sys.modules.get("gluoncv") is not None:
        return sys.modules["gluoncv"]
    import_mxnet()
    from PIL import ImageFile

    truncated = ImageFile.LOAD_TRUNCATED_IMAGES
    try:
        with _hide_torch():
            import gluoncv
    except ImportError as err:
        raise ImportError(f"GluonCV is not importable ({err}): {MX_HINT}") from err
    finally:
        # gluoncv.data.mhp sets PIL's process-wide LOAD_TRUNCATED_IMAGES = True at import,
        # which would make truncated JPEGs load silently as grey: undo it
        ImageFile.LOAD_TRUNCATED_IMAGES = truncated
    return gluoncv
