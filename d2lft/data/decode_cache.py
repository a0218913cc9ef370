"""Decode each image once: the fast pipeline's image store, cache and crop sampler.

Backend-neutral (numpy and PIL only). The book's loaders decode every JPEG again in
every epoch; the fast pipeline (`train_fine_tuning(..., pipeline='fast')`) decodes
each file once into an :class:`ImageStore` (all images in one flat uint8 buffer) and
keeps it in memory for later runs in the same process, and optionally on disk.

Size bound (`default_max_short`): a training image whose short side is larger than
``2 * image_size`` is stored resized (PIL bilinear, antialiased) so that its short
side is ``2 * image_size``. Why that bound keeps RandomResizedCrop's quality:

* The crop's parameters are always drawn on the *original* size (the store keeps
  it), so the crop distribution is exactly the book's.
* A crop whose side spans at least half of the image's short side still covers at
  least ``image_size`` stored pixels, so it is *downsampled* to the output (as in the
  book): both paths average away the same detail and agree up to interpolation
  rounding. With scale in [0.08, 1] and ratio in [3/4, 4/3] that is most crops.
* Smaller crops are upsampled in the stored image from at least
  ``sqrt(0.08 * 3/4) * 2 * image_size ~= 0.49 * image_size`` pixels; in the book they
  come from more pixels only when the original is larger than the bound, which the
  hotdog photos mostly are not (their long side is at most a few hundred pixels).
* The test transform needs ``image_size * 256/224 < 2 * image_size`` pixels, and the
  test store is made from the original files by the book's own transform anyway.

Memory: ``2 * image_size`` bounds a 224-px store to ~0.6 MB per 4:3 image (2,000
images: ~1.2 GB); images already smaller are stored as they are.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import os
import pathlib
import threading
import warnings

import numpy as np

from .._sys.atomic import atomic_path
from .._sys.env import MAX_MB, env_number
from .hub import cache_dir
from .images import BadImageError, exif_orientation, swaps_sides, to_rgb, upright

#: Default MiB of decoded images kept in memory across runs (per process), unless
#: $D2LFT_DECODE_CACHE_MB says otherwise (read when a cache is first used).
MEMORY_LIMIT_MB = 4096
MEMORY_ENV = "D2LFT_DECODE_CACHE_MB"
_FORMAT = 1


def memory_limit_mb() -> int:
    """$D2LFT_DECODE_CACHE_MB (a whole number of MiB, 0 keeps nothing), else
    :data:`MEMORY_LIMIT_MB`; ValueError naming the variable and its range otherwise."""
    unit = "MiB; 0 keeps no decoded image in memory"
    return int(
        env_number(MEMORY_ENV, MEMORY_LIMIT_MB, integer=True, high=MAX_MB, low_ok=True, unit=unit)
    )


def default_max_short(image_size: int) -> int:
    """The stored short side bound for training images (see the module docstring)."""
    return 2 * int(image_size)


@dataclasses.dataclass
class ImageStore:
    """Images as one flat uint8 buffer: image `k` is
    ``data[offsets[k]: offsets[k] + h*w*3].reshape(h, w, 3)`` (RGB, HWC) with
    ``(h, w) = shapes[k]``; `orig` holds each file's original (h, w)."""

    data: np.ndarray
    offsets: np.ndarray
    shapes: np.ndarray
    orig: np.ndarray
    keys: list

    def __len__(self):
        return len(self.offsets)

    def image(self, k: int) -> np.ndarray:
        h, w = (int(v) for v in self.shapes[k])
        o = int(self.offsets[k])
        return self.data[o : o + h * w * 3].reshape(h, w, 3)

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)

    on_disk = False

    def stack(self) -> np.ndarray:
        """All images as one (N, h, w, 3) array (they must share one shape)."""
        if len(self) and not (self.shapes == self.shapes[0]).all():
            raise ValueError("images of different sizes cannot be stacked")
        h, w = (int(v) for v in self.shapes[0]) if len(self) else (0, 0)
        return self.data.reshape(len(self), h, w, 3)

    def rows(self, lo: int, hi: int) -> np.ndarray:
        """Images `lo` to `hi` (exclusive) as one (n, h, w, 3) array (one shape)."""
        return self.stack()[lo:hi]

    @classmethod
    def from_arrays(cls, arrays, origs, keys):
        shapes = np.array([a.shape[:2] for a in arrays], dtype=np.int64).reshape(-1, 2)
        sizes = shapes[:, 0] * shapes[:, 1] * 3
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        data = np.empty(int(sizes.sum()), dtype=np.uint8)

        def put(k):
            data[offsets[k] : offsets[k] + sizes[k]] = np.asarray(arrays[k], np.uint8).reshape(-1)

        if len(arrays) > 64 and data.nbytes > 2**26:  # numpy copies release the GIL
            with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as ex:
                list(ex.map(put, range(len(arrays))))
        else:
            for k in range(len(arrays)):
                put(k)
        return cls(
            data, offsets, shapes, np.array(origs, dtype=np.int64).reshape(-1, 2), list(keys)
        )


class DiskImageStore:
    """The images of an :class:`ImageStore` kept in one raw file on disk and read when
    asked for (``os.pread``), so that resident memory does not grow with the dataset
    (only the index is in memory: four numbers an image). Made by
    :func:`write_disk_store`; the same reading methods as ImageStore."""

    on_disk = True

    def __init__(self, path, offsets, shapes, orig, keys):
        self.path = pathlib.Path(path)
        self.offsets, self.shapes, self.orig, self.keys = offsets, shapes, orig, list(keys)
        self._fd = os.open(self.path, os.O_RDONLY)

    def __len__(self):
        return len(self.offsets)

    def __del__(self):
        fd = getattr(self, "_fd", None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)

    def _read(self, offset: int, size: int) -> np.ndarray:
        buf = bytearray(size)  # writable, as arrays made from decoding are
        if os.preadv(self._fd, [buf], offset) != size:
            raise OSError(
                f"{self.path} is shorter than its index says (truncated?): "
                f"delete it to decode the images again"
            )
        return np.frombuffer(buf, dtype=np.uint8)

    def image(self, k: int) -> np.ndarray:
        h, w = (int(v) for v in self.shapes[k])
        return self._read(int(self.offsets[k]), h * w * 3).reshape(h, w, 3)

    def rows(self, lo: int, hi: int) -> np.ndarray:
        """Images `lo` to `hi` (exclusive), which must share one shape, in one read."""
        if hi <= lo:
            return (
                np.zeros((0, *self.shapes[0], 3), np.uint8)
                if len(self)
                else np.zeros((0, 0, 0, 3), np.uint8)
            )
        h, w = (int(v) for v in self.shapes[lo])
        if not (self.shapes[lo:hi] == (h, w)).all():
            raise ValueError("images of different sizes cannot be read as rows")
        return self._read(int(self.offsets[lo]), (hi - lo) * h * w * 3).reshape(-1, h, w, 3)

    @property
    def nbytes(self) -> int:
        return 0  # resident: the index only

    @property
    def disk_bytes(self) -> int:
        return int((self.shapes[:, 0] * self.shapes[:, 1] * 3).sum())


def write_disk_store(target, paths, keys, fn, *, workers=1, batch_fn=None, chunk=256):
    """Decode `paths` (``fn(path) -> (HxWx3 uint8, (orig h, orig w))``, or `batch_fn`
    on a list) `chunk` at a time, appending them to the raw file `target` and its
    index ``target + '.index.npz'``, both written beside and renamed into place (a
    store is complete when its index exists). Memory: one chunk. Returns the store."""
    target = pathlib.Path(target)
    index = target.with_name(target.name + ".index.npz")
    offsets, shapes, origs, pos = [], [], [], 0
    with atomic_path(target) as tmp, open(tmp, "wb") as f:
        pool = concurrent.futures.ThreadPoolExecutor(workers) if workers > 1 else None
        try:
            for start in range(0, len(paths), chunk):
                part = paths[start : start + chunk]
                if batch_fn is not None:
                    results = batch_fn(part)
                elif pool is not None:
                    results = list(pool.map(fn, part))
                else:
                    results = [fn(p) for p in part]
                for p, (arr, orig) in zip(part, results, strict=True):
                    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
                        raise ValueError(
                            f"expected an HxWx3 uint8 image for {p}, got {arr.dtype} {arr.shape}"
                        )
                    f.write(np.ascontiguousarray(arr).tobytes())
                    offsets.append(pos)
                    shapes.append(arr.shape[:2])
                    origs.append(orig)
                    pos += arr.nbytes
        finally:
            if pool is not None:
                pool.shutdown()
    arrays = {
        "offsets": np.array(offsets, np.int64),
        "shapes": np.array(shapes, np.int64).reshape(-1, 2),
        "orig": np.array(origs, np.int64).reshape(-1, 2),
        "meta": np.array(json.dumps({"format": _FORMAT, "keys": list(keys)})),
    }
    with atomic_path(index) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    return DiskImageStore(target, arrays["offsets"], arrays["shapes"], arrays["orig"], keys)


def read_disk_store(target, keys):
    """The complete store at `target` if its index lists exactly `keys`, else None."""
    target = pathlib.Path(target)
    index = target.with_name(target.name + ".index.npz")
    if not (index.is_file() and target.is_file()):
        return None
    try:
        with np.load(index, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if meta.get("format") != _FORMAT or meta.get("keys") != list(keys):
                return None
            store = DiskImageStore(target, z["offsets"], z["shapes"], z["orig"], keys)
    except Exception as err:  # a damaged index: decoded again, never trusted
        warnings.warn(
            f"ignoring unreadable decoded store {index} ({err}); decoding again", stacklevel=3
        )
        return None
    if target.stat().st_size != store.disk_bytes:
        return None
    return store


def estimate_bytes(paths, max_short=None) -> int:
    """The bytes the images at `paths` take decoded (HxWx3, short side at most
    `max_short`), from their headers (no decoding)."""
    from PIL import Image

    total = 0
    for p in paths:
        try:
            with Image.open(p) as im:
                w, h = im.size
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
            continue  # named later, by the decoder
        sh, sw = reduced_size(h, w, max_short)
        total += sh * sw * 3
    return total


def memory_budget_bytes(budget_mb=None) -> int:
    """The bytes of decoded images a run may keep in memory: `budget_mb` MiB, else a
    quarter of the memory available now (/proc/meminfo's MemAvailable; 4 GiB where
    unknown)."""
    if budget_mb is not None:
        return int(budget_mb) * 2**20
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 // 4
    except (OSError, ValueError, IndexError):
        pass
    return 4 * 2**30


def file_key(path) -> str:
    """A file's identity for the cache: absolute path, size and modification time."""
    path = os.path.abspath(os.fspath(path))
    st = os.stat(path)
    return f"{path}|{st.st_size}|{st.st_mtime_ns}"


def reduced_size(h, w, max_short):
    """The stored (h, w) of an (h, w) original: short side reduced to `max_short` when
    larger (the decode bound), aspect ratio kept."""
    if not max_short or min(h, w) <= max_short:
        return h, w
    f = max_short / min(h, w)
    return max(1, int(round(h * f))), max(1, int(round(w * f)))


def decode_rgb(path, max_short=None):
    """Decode `path` with PIL to an RGB uint8 HxWx3 array, turned upright as its EXIF
    orientation says and every mode converted as both backends' datasets convert it
    (`d2lft.data.load_rgb`, `d2lft.data.to_rgb`), its short side reduced
    to `max_short` when larger (JPEGs much larger than that are decoded at a reduced
    DCT scale first, which is faster and at least as sharp as the target).

    Returns ``(array, (orig_h, orig_w))`` (the upright image's size). Unreadable files raise
    `d2lft.data.BadImageError` naming the file.
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            orientation = exif_orientation(im)
            turn = swaps_sides(orientation)
            ow, oh = im.size[::-1] if turn else im.size  # the upright image's size
            th, tw = reduced_size(oh, ow, max_short)
            target = (tw, th) if (th, tw) != (oh, ow) else None  # PIL sizes are (w, h)
            if target is not None and im.format == "JPEG" and min(ow, oh) >= 2 * max_short:
                # libjpeg's DCT scaling (>= target, much faster), in the file's orientation
                im.draft("RGB", target[::-1] if turn else target)
            im.load()
            im = to_rgb(upright(im))
            if target is not None and im.size != target:
                im = im.resize(target, Image.BILINEAR)
            arr = np.asarray(im, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise BadImageError(
            f"cannot read image {path}: {err}; remove or replace the file"
        ) from err
    return arr, (oh, ow)


def _check_store(store: ImageStore) -> None:
    """ValueError unless `store`'s arrays agree with each other (a pack read from disk
    whose contents were damaged or edited is rebuilt, not used)."""
    n = len(store.keys)
    data, offsets, shapes, orig = store.data, store.offsets, store.shapes, store.orig
    if data.dtype != np.uint8 or data.ndim != 1:
        raise ValueError(f"data is {data.dtype} {data.shape}, not a flat uint8 buffer")
    for name, a, shape in (("offsets", offsets, (n,)), ("shapes", shapes, (n, 2))):
        if a.shape != shape or not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"{name} is {a.dtype} {a.shape}, expected integers {shape}")
    if orig.shape != (n, 2) or not np.issubdtype(orig.dtype, np.integer):
        raise ValueError(f"orig is {orig.dtype} {orig.shape}, expected integers {(n, 2)}")
    if not all(isinstance(k, str) for k in store.keys):
        raise ValueError("its keys are not all strings")
    if n:
        sizes = shapes[:, 0].astype(np.int64) * shapes[:, 1] * 3
        if (shapes <= 0).any() or (offsets < 0).any() or (orig <= 0).any():
            raise ValueError("it holds sizes or offsets <= 0")
        if int((offsets + sizes).max()) > data.size:
            raise ValueError("its offsets point past its data")


class DecodeCache:
    """Decoded images, kept in memory (least recently used packs beyond `memory_mb`
    are dropped) and, with `cache_dir`, on disk as one ``.npz`` pack per split and
    transform, written atomically; a file whose path, size or mtime changed is decoded
    again, the others are reused."""

    def __init__(self, cache_dir=None, memory_mb=None, workers=None):
        self.cache_dir = pathlib.Path(cache_dir) if cache_dir is not None else None
        self._memory_mb = memory_mb
        self.workers = workers or min(
            8,
            len(os.sched_getaffinity(0))
            if hasattr(os, "sched_getaffinity")
            else os.cpu_count() or 1,
        )
        self._packs = collections.OrderedDict()
        self._lock = threading.Lock()
        self.decoded = 0  # files decoded by this cache (for tests and reports)

    @property
    def memory_bytes(self) -> int:
        """The bytes of decoded images kept in memory (`memory_mb`, default
        $D2LFT_DECODE_CACHE_MB or :data:`MEMORY_LIMIT_MB`)."""
        mb = memory_limit_mb() if self._memory_mb is None else self._memory_mb
        return int(mb) * 2**20

    def clear(self):
        with self._lock:
            self._packs.clear()

    def _pack_path(self, kind, paths, folder=None):
        digest = hashlib.sha1(
            b"\n".join(os.fsencode(os.path.abspath(os.fspath(p))) for p in paths)
        ).hexdigest()[:16]
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in kind)
        return (folder or self.cache_dir) / f"{safe}-{digest}.npz"

    def load(self, paths, kind: str, fn, threads=True, batch_fn=None) -> ImageStore:
        """The store for `paths` transformed by ``fn(path) -> (uint8 HxWx3, (h, w))``.

        `kind` names `fn` and its parameters (e.g. ``'train-short448'``): entries made
        by another `kind` are never mixed in. `threads=False` runs `fn` in this thread
        only (for functions that are not thread-safe). `batch_fn`, when given, replaces
        `fn` for the files to decode: ``batch_fn(paths) -> [fn(p) for p in paths]``
        (e.g. decoding them on a GPU).
        """
        paths = [os.fspath(p) for p in paths]
        keys = [file_key(p) for p in paths]
        memory_bytes = self.memory_bytes  # a bad $D2LFT_DECODE_CACHE_MB: before any work
        mem_key = (kind, tuple(keys))
        with self._lock:
            if mem_key in self._packs:
                self._packs.move_to_end(mem_key)
                return self._packs[mem_key]
        old = self._read_disk(kind, paths) if self.cache_dir is not None else None
        index = {k: i for i, k in enumerate(old.keys)} if old is not None else {}
        arrays, origs, todo = [None] * len(paths), [None] * len(paths), []
        for n, k in enumerate(keys):
            if k in index:
                arrays[n] = old.image(index[k])
                origs[n] = tuple(old.orig[index[k]])
            else:
                todo.append(n)
        if todo:
            if batch_fn is not None:
                results = batch_fn([paths[n] for n in todo])
            elif threads and self.workers > 1 and len(todo) > 1:
                with concurrent.futures.ThreadPoolExecutor(self.workers) as ex:
                    results = list(ex.map(fn, [paths[n] for n in todo]))
            else:
                results = [fn(paths[n]) for n in todo]
            for n, (arr, orig) in zip(todo, results, strict=True):
                if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
                    raise ValueError(
                        f"{kind}: expected an HxWx3 uint8 image for {paths[n]}, "
                        f"got {arr.dtype} {arr.shape}"
                    )
                arrays[n], origs[n] = arr, orig
            self.decoded += len(todo)
        store = ImageStore.from_arrays(arrays, origs, keys)
        if self.cache_dir is not None and (todo or old is None or old.keys != keys):
            self._write_disk(kind, paths, store)
        with self._lock:
            if store.nbytes <= memory_bytes:
                self._packs[mem_key] = store
                while sum(s.nbytes for s in self._packs.values()) > memory_bytes:
                    self._packs.popitem(last=False)
        return store

    @property
    def disk_folder(self) -> pathlib.Path:
        """Where :meth:`load_on_disk` keeps its stores: this cache's folder, else
        ``$D2LFT_HOME/decoded``."""
        return self.cache_dir if self.cache_dir is not None else cache_dir() / "decoded"

    def load_on_disk(self, paths, kind: str, fn, threads=True, batch_fn=None):
        """The store for `paths` (as :meth:`load`) kept on disk and read per image: in
        this cache's folder, else ``$D2LFT_HOME/decoded``; reused while every file is
        unchanged (a changed file decodes the whole store again)."""
        paths = [os.fspath(p) for p in paths]
        keys = [file_key(p) for p in paths]
        mem_key = ("disk", kind, tuple(keys))
        with self._lock:
            if mem_key in self._packs:
                return self._packs[mem_key]
        folder = self.disk_folder
        folder.mkdir(parents=True, exist_ok=True)
        target = self._pack_path(kind, paths, folder).with_suffix(".u8")
        store = read_disk_store(target, keys)
        if store is None:
            workers = self.workers if threads else 1
            store = write_disk_store(target, paths, keys, fn, workers=workers, batch_fn=batch_fn)
            self.decoded += len(paths)
        with self._lock:
            self._packs[mem_key] = store  # resident: its index only
        return store

    def _read_disk(self, kind, paths):
        path = self._pack_path(kind, paths)
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                if meta.get("format") != _FORMAT or meta.get("kind") != kind:
                    return None
                store = ImageStore(
                    z["data"], z["offsets"], z["shapes"], z["orig"], list(meta["keys"])
                )
            _check_store(store)
            return store
        except Exception as err:  # a damaged pack is rebuilt, never trusted
            warnings.warn(
                f"ignoring unreadable decode cache {path} ({err}); rebuilding it", stacklevel=3
            )
            return None

    def _write_disk(self, kind, paths, store):
        path = self._pack_path(kind, paths)
        meta = json.dumps({"format": _FORMAT, "kind": kind, "keys": store.keys})
        try:
            with atomic_path(path) as tmp, open(tmp, "wb") as f:
                np.savez(
                    f,
                    data=store.data,
                    offsets=store.offsets,
                    shapes=store.shapes,
                    orig=store.orig,
                    meta=np.array(meta),
                )
        except OSError as err:  # a full or read-only disk must not stop training
            warnings.warn(
                f"could not write the decode cache {path} ({err}); continuing without it",
                stacklevel=3,
            )


_MEMORY = DecodeCache()


def get_cache(decode_cache="memory") -> DecodeCache:
    """The cache for `train_fine_tuning(decode_cache=...)`: 'memory' (this process's),
    'disk' ($D2LFT_HOME/decoded, plus memory), a folder path, or None (decode anew)."""
    if decode_cache == "memory":
        return _MEMORY
    if decode_cache is None or decode_cache is False:
        return DecodeCache(memory_mb=0)
    if decode_cache == "disk":
        folder = cache_dir() / "decoded"
    elif isinstance(decode_cache, (str, os.PathLike)):
        folder = pathlib.Path(decode_cache).expanduser()
    else:
        raise ValueError(
            f"decode_cache must be 'memory', 'disk', a folder path or None, got {decode_cache!r}"
        )
    cache = _DISK.get(str(folder))
    if cache is None:
        cache = _DISK[str(folder)] = DecodeCache(folder)
    return cache


_DISK = {}


def train_store(
    paths, image_size, decode_cache="memory", max_short=None, decoder=None, on_disk=False
) -> ImageStore | DiskImageStore:
    """Training images decoded once with PIL, short side at most `max_short`
    (default :func:`default_max_short`). `decoder`, when given, decodes the files
    instead: ``decoder(paths, max_short)`` returns what `decode_rgb` returns for each,
    and ``decoder.kind`` names it in the cache (e.g. the torch backend's GPU decoder).
    `on_disk`: keep them on disk and read them per batch (:class:`DiskImageStore`)."""
    max_short = default_max_short(image_size) if max_short is None else int(max_short)
    kind = f"train-rgb-short{max_short}"
    batch_fn = None
    if decoder is not None:
        kind += f"-{decoder.kind}"
        batch_fn = lambda ps: decoder(ps, max_short)  # noqa: E731
    cache = get_cache(decode_cache)
    load = cache.load_on_disk if on_disk else cache.load
    return load(paths, kind, lambda p: decode_rgb(p, max_short), batch_fn=batch_fn)


@dataclasses.dataclass(frozen=True)
class StorePlan:
    """Where a fast run keeps its decoded images: `train_bytes` and `test_bytes`
    decoded, `budget` the memory allowed; `on_disk` when they do not fit it."""

    train_bytes: int
    test_bytes: int
    budget: int

    @property
    def total(self) -> int:
        return self.train_bytes + self.test_bytes

    @property
    def on_disk(self) -> bool:
        return self.total > self.budget

    def describe(self) -> str:
        gb = 2**30
        return (
            f"{self.total / gb:.2f} GB of decoded images, "
            f"{'over' if self.on_disk else 'within'} the {self.budget / gb:.2f} GB "
            f"memory budget"
        )


def plan_store(train_paths, num_test, image_size, budget_mb=None) -> StorePlan:
    """How much the fast pipeline's decoded images take (training images at the decode
    bound, read from their headers; test images at the crop size) against the memory
    budget (:func:`memory_budget_bytes`)."""
    size = int(image_size)
    return StorePlan(
        estimate_bytes(train_paths, default_max_short(size)),
        int(num_test) * size * size * 3,
        memory_budget_bytes(budget_mb),
    )
