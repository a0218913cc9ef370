"""Break d2lft on purpose and check that the tests notice (a small mutation audit).

    python scripts/mutants.py            # every mutant: apply, run its tests, restore
    python scripts/mutants.py --list     # what each mutant breaks and the tests that kill it
    python scripts/mutants.py ID [ID..]  # only these

Each mutant is one or more text replacements in d2lft's sources, the kind of
regression that once survived the suite. An edit is either ``(file, old, new)``, `old`
found exactly once in the file, or ``(file, function, old_line, new_line)``: the one
line of function `function` (a name, or ``Class.method``; a class or a module's
constant works too) that reads `old_line` once stripped of its indentation is
replaced by `new_line`, at the same indentation. The second form survives a refactor
that moves or reformats the code around that line. A mutant is applied to a copy of
the repository in a temporary folder (the working tree is never touched), then the
tests that should kill it run there (`pytest -x`); a mutant is *killed* when they
fail. Exit status 1 if any mutant survives or no longer applies. tests/test_mutants.py
checks, without running them, that every mutant still applies to the current sources.
"""

from __future__ import annotations

import argparse
import ast
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]

#: id -> (what it breaks, [(file, old, new) or (file, function, old_line, new_line)],
#: pytest arguments that must fail)
MUTANTS = {
    "torch-fast-no-flip": (
        "torch fast pipeline: crops are never flipped",
        [
            (
                "d2lft/backends/torch/fastdata.py",
                "out[k] = a[:, ::-1] if flips[k] else a",
                "out[k] = a",
            )
        ],
        ["tests/test_batches.py::test_training_batches_are_the_books_augmentation[torch-fast]"],
    ),
    "torch-fast-whole-image": (
        "torch fast pipeline: the crop sampler returns the whole image",
        [
            (
                "d2lft/backends/torch/fastdata.py",
                "top, left, h, w = sample_resized_crops(self.rng, o[:, 0], o[:, 1])",
                "top, left, h, w = 0 * o[:, 0], 0 * o[:, 1], o[:, 0], o[:, 1]",
            )
        ],
        ["tests/test_batches.py::test_training_batches_are_the_books_augmentation[torch-fast]"],
    ),
    "torch-fast-epoch0-stream": (
        "torch fast pipeline: every epoch reuses epoch 0's random stream",
        [
            (
                "d2lft/backends/torch/fastdata.py",
                "self.rng = np.random.default_rng(epoch_seed(self.seed, epoch))",
                "self.rng = np.random.default_rng(epoch_seed(self.seed, 0))",
            )
        ],
        ["tests/test_batches.py::test_training_batches_are_the_books_augmentation[torch-fast]"],
    ),
    "mxnet-fast-labels-misaligned": (
        "MXNet fast pipeline: training labels shifted by one within each batch",
        [
            (
                "d2lft/backends/mxnet/fastdata.py",
                'mx.nd.array(self.train_labels[b], dtype="int32"),',
                'mx.nd.array(np.roll(self.train_labels[b], 1), dtype="int32"),',
            )
        ],
        ["tests/test_batches.py::test_training_batches_are_the_books_augmentation[mxnet-fast]"],
    ),
    "test-resize-is-image-size": (
        "both backends: the test transform resizes to image_size (no center crop margin)",
        [
            (
                "d2lft/data/images.py",
                "return int(round(image_size * 256 / 224))",
                "return int(image_size)",
            )
        ],
        ["tests/test_batches.py::test_evaluation_batches_equal_the_frameworks_own"],
    ),
    "train-augs-no-flip": (
        "both backends: train_augs without the horizontal flip",
        [
            ("d2lft/backends/torch/data.py", "        transforms.RandomHorizontalFlip(),\n", ""),
            ("d2lft/backends/mxnet/data.py", "        transforms.RandomFlipLeftRight(),\n", ""),
        ],
        ["tests/test_batches.py", "-k", "chapters_composition or flip_half"],
    ),
    "mxnet-step-by-batch-size": (
        "MXNet book loop: trainer.step(batch_size) instead of the batch's own size",
        [
            (
                "d2lft/backends/mxnet/runners.py",
                "self.trainer.step(y.shape[0] if n is None else n)",
                "self.trainer.step(self.plan.batch_size if n is None else n)",
            )
        ],
        [
            "tests/test_book_oracle.py::test_mxnet_tab_matches_the_book",
            "tests/test_parity.py::test_a_smaller_last_batch_agrees_under_its_own_size",
        ],
    ),
    "mxnet-fast-set-epoch-noop": (
        "MXNet fast pipeline: set_epoch does nothing (resume no longer exact)",
        [
            (
                "d2lft/backends/mxnet/fastdata.py",
                "            self.rng = np.random.default_rng(epoch_seed(self.seed, epoch))",
                "            pass",
            )
        ],
        ["tests/test_fast_path.py::test_fast_resume_continues_exactly[mxnet-fp32]"],
    ),
    "precision-auto-ignores-units": (
        "precision='auto' never picks bf16, even on CPUs with bf16 units",
        [("d2lft/backends/torch/runtime.py", 'return "bf16" if ok else "fp32"', 'return "fp32"')],
        ["tests/test_fast_path.py::test_precision_auto_follows_hardware"],
    ),
    "host-peak-not-sampled": (
        "peak host memory: the sampler thread records nothing",
        [
            (
                "d2lft/_sys/memory.py",
                "        while not self._stop.wait(self.interval):\n            self._sample()",
                "        while not self._stop.wait(self.interval):\n            pass",
            )
        ],
        ["tests/test_fast_path.py", "-k", "memory or host_peak"],
    ),
    "crop-scale-narrowed": (
        "crop sampler: upper scale bound 1.0 -> 0.954 (5% narrower)",
        [("d2lft/data/crops.py", "RRC_SCALE = (0.08, 1.0)", "RRC_SCALE = (0.08, 0.954)")],
        ["tests/test_fast_path.py", "-k", "crop_distribution_matches_torchvision"],
    ),
    "crop-ratio-narrowed": (
        "crop sampler: upper aspect ratio bound 4/3 -> 4/3 * 0.95",
        [
            (
                "d2lft/data/crops.py",
                "RRC_RATIO = (3.0 / 4.0, 4.0 / 3.0)",
                "RRC_RATIO = (3.0 / 4.0, 4.0 / 3.0 * 0.95)",
            )
        ],
        ["tests/test_fast_path.py", "-k", "crop_distribution_matches_torchvision"],
    ),
    "bf16-guard-off": (
        "bf16 on the CPU: convolutions with padding-only taps run in bf16 (oneDNN bug)",
        [
            (
                "d2lft/backends/torch/runtime.py",
                '    if precision != "bf16" or device.type != "cpu":',
                "    if True:",
            )
        ],
        ["tests/test_fast_path.py", "-k", "bf16"],
    ),
    "builder-seed-ignored": (
        "build_finetune_net(seed=...) does not seed the initialisation",
        [("d2lft/api.py", "        backend.seed_framework(seed)", "        pass")],
        ["tests/test_train.py", "-k", "seed_repeats"],
    ),
    # issue 16: the default pipeline's choice and the fast pipeline's memory bound
    "memory-budget-ignored": (
        "the fast pipeline keeps its decoded images in memory whatever the budget",
        [
            (
                "d2lft/data/decode_cache.py",
                "        return self.total > self.budget",
                "        return False",
            )
        ],
        ["tests/test_memory_bound.py", "-k", "auto_keeps"],
    ),
    "disk-store-shifted": (
        "decoded images kept on disk are read one pixel off",
        [
            (
                "d2lft/data/decode_cache.py",
                "        return self._read(int(self.offsets[k]), h * w * 3).reshape(h, w, 3)",
                "        return self._read(int(self.offsets[k]) + 3, h * w * 3).reshape(h, w, 3)",
            )
        ],
        ["tests/test_memory_bound.py", "-k", "disk_store_holds or training_from_disk"],
    ),
    "torch-ddp-unscaled-loss": (
        "torch DDP: the summed loss not multiplied by the world size (DDP averages)",
        [
            (
                "d2lft/backends/torch/runners.py",
                "(l.sum() * self.world if self.world > 1 else l.sum()).backward()",
                "l.sum().backward()",
            )
        ],
        ["tests/test_distributed.py", "-k", "equal and torch"],
    ),
    "mxnet-dist-local-step": (
        "MXNet dist_sync: every worker steps by its shard's size, not the global batch's",
        [
            (
                "d2lft/backends/mxnet/runners.py",
                "self.trainer.step(y.shape[0] if n is None else n)",
                "self.trainer.step(y.shape[0])",
            )
        ],
        ["tests/test_distributed.py", "-k", "equal and mxnet"],
    ),
    "mxnet-dist-own-running-stats": (
        "MXNet dist_sync: each worker evaluates with its own BatchNorm running statistics",
        [
            (
                "d2lft/backends/mxnet/runners.py",
                "        self.plan.job.broadcast_arrays(aux)",
                "        pass",
            )
        ],
        ["tests/test_distributed.py", "-k", "saves and mxnet"],
    ),
    "torch-ddp-own-buffers": (
        "torch DDP: rank 0's buffers (BatchNorm running statistics) not broadcast",
        [
            (
                "d2lft/backends/torch/runners.py",
                "DistributedDataParallel(module, device_ids=ids)",
                "DistributedDataParallel(module, device_ids=ids, broadcast_buffers=False)",
            )
        ],
        ["tests/test_distributed.py", "-k", "saves and torch or equal and torch"],
    ),
    "fast-multi-gpu-one-process": (
        "d2lft train: the fast pipeline on several GPUs stays one process (no DDP)",
        [("d2lft/cli.py", "    return len(gpus)\n", "    return None\n")],
        ["tests/test_distributed.py", "-k", "one_worker_per_gpu"],
    ),
    "shards-all-the-same": (
        "distributed: every worker reads rank 0's shard of each batch",
        [("d2lft/data/shards.py", "    start = rank * step", "    start = 0 * step")],
        ["tests/test_distributed.py", "-k", "shards_split or equal"],
    ),
    "book-dist-same-crops": (
        "distributed book pipeline: every rank crops and flips its shard as the others do",
        [
            (
                "d2lft/backends/mxnet/data.py",
                "        seed_everything(rank_seed(np.random.randint(2**31 - 1), self.rank))",
                "        seed_everything(rank_seed(np.random.randint(2**31 - 1), 0))",
            )
        ],
        ["tests/test_distributed.py", "-k", "own_crops"],
    ),
    # issue 18: export and serve
    "onnx-mxnet-fixed-gamma-kept": (
        "MXNet's ONNX export keeps a fix_gamma BatchNorm's stored gamma (MXNet uses 1)",
        [
            (
                "d2lft/backends/mxnet/export.py",
                "        params[name] = mx.nd.ones_like(params[name])",
                "        params[name] = params[name]",
            )
        ],
        ["tests/test_export.py", "-k", "logits and mxnet and v2"],
    ),
    "onnx-transform-crop-floor": (
        "the numpy test transform floors the center-crop offset (torchvision rounds)",
        [
            (
                "d2lft/data/preprocess.py",
                "return int(round((size - crop) / 2.0))",
                "return (size - crop) // 2",
            )
        ],
        ["tests/test_export.py", "-k", "numpy_transform"],
    ),
    "onnx-transform-bicubic": (
        "the numpy test transform resizes with a bicubic filter (torchvision: bilinear)",
        [("d2lft/data/preprocess.py", "Image.BILINEAR)", "Image.BICUBIC)")],
        ["tests/test_export.py", "-k", "numpy_transform"],
    ),
    "serve-no-lock": (
        "d2lft serve: concurrent requests run their forward passes at the same time",
        [("d2lft/deploy/serve.py", "        with self.lock:", "        if True:")],
        ["tests/test_serve.py", "-k", "concurrent and torch"],
    ),
    "serve-no-drain": (
        "d2lft serve: a too-large upload is answered while the client is still sending",
        [
            (
                "d2lft/deploy/serve.py",
                "        while not self.ended and budget > 0:",
                "        while False:",
            )
        ],
        ["tests/test_serve.py", "-k", "bad_uploads"],
    ),
    "serve-no-stream-limit": (
        "d2lft serve: an upload without Content-Length is read whatever its size",
        [
            (
                "d2lft/deploy/serve.py",
                "            if self.seen > self.limit:",
                "            if False:",
            )
        ],
        ["tests/test_serve.py", "-k", "bad_uploads"],
    ),
    # issue 22: section 2 (tests that catch what users would notice); each edit names
    # the function (or constant) and one line it must contain
    "issue22-early-stop-auto-mode": (
        "EarlyStopping mode='auto': max for the loss, min for accuracies",
        [
            (
                "d2lft/engine/callbacks.py",
                "EarlyStopping.__init__",
                'mode = "min" if monitor == "train_loss" else "max"',
                'mode = "max" if monitor == "train_loss" else "min"',
            )
        ],
        ["tests/test_early_stopping.py", "-k", "auto_mode"],
    ),
    "issue22-early-stop-min-delta-max": (
        "EarlyStopping: min_delta ignored in mode 'max'",
        [
            (
                "d2lft/engine/callbacks.py",
                "EarlyStopping._update",
                "else value > self.best + self.min_delta",
                "else value > self.best",
            )
        ],
        ["tests/test_early_stopping.py", "-k", "min_delta"],
    ),
    "issue22-early-stop-min-delta-min": (
        "EarlyStopping: min_delta ignored in mode 'min'",
        [
            (
                "d2lft/engine/callbacks.py",
                "EarlyStopping._update",
                "value < self.best - self.min_delta",
                "value < self.best",
            )
        ],
        ["tests/test_early_stopping.py", "-k", "min_delta"],
    ),
    "issue22-early-stop-no-replay": (
        "EarlyStopping forgets a resumed run's earlier epochs",
        [
            (
                "d2lft/engine/callbacks.py",
                "EarlyStopping.on_train_begin",
                "self._update(value)",
                "pass",
            )
        ],
        ["tests/test_early_stopping.py", "-k", "resumed_run or resumed_from"],
    ),
    "issue22-callbacks-user-first": (
        "the user's callbacks run before d2lft's own (before this epoch's checkpoint)",
        [
            (
                "d2lft/api.py",
                "train",
                "callback_list = cb.CallbackList([*default_callbacks(plan), *callbacks])",
                "callback_list = cb.CallbackList([*callbacks, *default_callbacks(plan)])",
            )
        ],
        ["tests/test_callbacks.py::test_your_callbacks_see_this_epochs_checkpoint"],
    ),
    "issue22-train-end-stops-at-error": (
        "an on_train_end that raises skips the cleanups after it",
        [
            (
                "d2lft/engine/callbacks.py",
                "CallbackList.on_train_end",
                "first = first or err",
                "raise",
            )
        ],
        ["tests/test_callbacks.py", "-k", "on_train_end or cleanup"],
    ),
    "issue22-speed-wall-clock": (
        "examples/sec over the wall clock (evaluation included)",
        [
            (
                "d2lft/engine/loop.py",
                "fit",
                'history.examples_per_sec = done / train_time if train_time else float("nan")',
                "history.examples_per_sec = done / (time.perf_counter() - start) "
                'if train_time else float("nan")',
            )
        ],
        ["tests/test_speed.py::test_examples_per_sec_counts_only_the_training_steps"],
    ),
    "issue22-speed-no-finish": (
        "examples/sec leaves out the device work a step queued (finish_epoch)",
        [("d2lft/engine/loop.py", "_train_epoch", "seconds += runner.finish_epoch()", "pass")],
        ["tests/test_speed.py::test_examples_per_sec_counts_only_the_training_steps"],
    ),
    "issue22-speed-counts-resumed": (
        "a resumed run's examples/sec counts the checkpoint's examples too",
        [
            (
                "d2lft/engine/loop.py",
                "fit",
                "done = history.num_examples - resumed_examples",
                "done = history.num_examples",
            )
        ],
        ["tests/test_speed.py::test_a_resumed_run_reports_the_speed_of_its_own_epochs"],
    ),
    "issue22-resume-other-classes": (
        "resume= accepts data with other classes",
        [
            (
                "d2lft/io/checkpoint.py",
                "resume_into",
                "if ck.classes and classes not in (None, ck.classes):",
                "if False:",
            )
        ],
        ["tests/test_resume_checks.py::test_resuming_on_other_classes_is_refused"],
    ),
    "issue22-resume-seed-unchecked": (
        "resume= with another seed does not warn",
        [("d2lft/io/checkpoint.py", "REPRODUCIBILITY_KEYS", '"seed",', "")],
        ["tests/test_resume_checks.py::test_resuming_with_another_seed_warns"],
    ),
    "issue22-resume-num-examples": (
        "History.num_examples forgets the epochs before the resume",
        [
            (
                "d2lft/io/checkpoint.py",
                "resume_into",
                "history.num_examples += old.num_examples",
                "",
            )
        ],
        ["tests/test_resume_checks.py::test_num_examples_counts_the_epochs_before_the_resume"],
    ),
    "issue22-checkpoint-newer-format": (
        "a checkpoint of a newer format is read as if it were current",
        [
            (
                "d2lft/io/checkpoint.py",
                "read_checkpoint",
                "if _is_int(version) and version > CHECKPOINT_VERSION:",
                "if False:",
            )
        ],
        ["tests/test_resume_checks.py::test_a_checkpoint_from_a_newer_d2lft_is_refused"],
    ),
    "issue22-reclaim-any-host": (
        "another host's temporary files are reclaimed (shared NFS folders)",
        [
            (
                "d2lft/_sys/locks.py",
                "reclaim",
                "if owner is None or owner[0] != _host() or _pid_alive(owner[1]):",
                "if owner is None or _pid_alive(owner[1]):",
            )
        ],
        ["tests/test_shared_folders.py", "-k", "another_host"],
    ),
    "issue22-host-name-cut": (
        "two hosts share a temporary-name tag (dots made underscores, long names cut)",
        [
            (
                "d2lft/_sys/locks.py",
                "_host",
                'return f"{safe[: _HOST_CHARS - 9]}_{hashlib.sha1(raw.encode()).hexdigest()[:8]}"',
                "return safe[:_HOST_CHARS]",
            )
        ],
        ["tests/test_shared_folders.py", "-k", "another_host"],
    ),
    "issue22-image-mode-I-clipped": (
        "32-bit integer images ('I') go through PIL's clipping convert",
        [
            (
                "d2lft/data/images.py",
                "to_rgb",
                'if im.mode.startswith("I;16") or im.mode in ("I", "F"):',
                'if im.mode.startswith("I;16") or im.mode == "F":',
            )
        ],
        ["tests/test_image_modes.py", "-k", "16-bit or 32-bit"],
    ),
    "issue22-image-mode-I-as-16-bit": (
        "32-bit values of an 'I' image scaled as 16-bit ones (mostly white)",
        [
            (
                "d2lft/data/images.py",
                "to_rgb",
                "arr = arr * (255.0 / (2**31 - 1))",
                "arr = arr / 257.0",
            )
        ],
        ["tests/test_image_modes.py", "-k", "32-bit"],
    ),
    "issue22-image-mode-F-unscaled": (
        "float images in 0..1 are not scaled to 0..255",
        [
            (
                "d2lft/data/images.py",
                "to_rgb",
                "arr = arr * 255.0 if arr.size and np.nanmax(arr) <= 1.0 else arr",
                "arr = arr",
            )
        ],
        ["tests/test_image_modes.py", "-k", "F"],
    ),
    "issue22-image-mode-La": (
        "a premultiplied 'La' image cannot be converted (PIL has no La -> RGB)",
        [("d2lft/data/images.py", "to_rgb", 'im = im.convert("LA")', "pass")],
        ["tests/test_image_modes.py", "-k", "La"],
    ),
    "issue22-cache-key-torch-test-size": (
        "torch's cached test crops are keyed without image_size",
        [
            (
                "d2lft/backends/torch/fastdata.py",
                "test_store",
                'return load(paths, f"torch-test-{image_size}", '
                "lambda p: book_test_uint8(p, image_size))",
                'return load(paths, "torch-test", lambda p: book_test_uint8(p, image_size))',
            )
        ],
        ["tests/test_cache_keys.py", "-k", "another_size and torch"],
    ),
    "issue22-cache-key-mxnet-test-size": (
        "MXNet's cached test crops are keyed without image_size",
        [
            (
                "d2lft/backends/mxnet/fastdata.py",
                "test_store",
                'paths, f"mxnet-test-{image_size}", lambda p: book_test_uint8(p, image_size), '
                "threads=False",
                'paths, "mxnet-test", lambda p: book_test_uint8(p, image_size), threads=False',
            )
        ],
        ["tests/test_cache_keys.py", "-k", "another_size and mxnet"],
    ),
    "issue22-cache-key-train-size": (
        "cached training images are keyed without their decode bound (image_size)",
        [
            (
                "d2lft/data/decode_cache.py",
                "train_store",
                'kind = f"train-rgb-short{max_short}"',
                'kind = "train-rgb"',
            )
        ],
        ["tests/test_cache_keys.py", "-k", "another_size"],
    ),
    "issue22-cache-key-backend": (
        "torch's and MXNet's cached test crops share one key",
        [
            (
                "d2lft/backends/torch/fastdata.py",
                "test_store",
                'return load(paths, f"torch-test-{image_size}", '
                "lambda p: book_test_uint8(p, image_size))",
                'return load(paths, f"test-{image_size}", '
                "lambda p: book_test_uint8(p, image_size))",
            ),
            (
                "d2lft/backends/mxnet/fastdata.py",
                "test_store",
                'paths, f"mxnet-test-{image_size}", lambda p: book_test_uint8(p, image_size), '
                "threads=False",
                'paths, f"test-{image_size}", lambda p: book_test_uint8(p, image_size), '
                "threads=False",
            ),
        ],
        ["tests/test_cache_keys.py::test_the_two_backends_test_crops_never_mix"],
    ),
    "issue22-cache-key-mtime": (
        "a file rewritten in place (same size) keeps its old decoded pixels",
        [
            (
                "d2lft/data/decode_cache.py",
                "file_key",
                'return f"{path}|{st.st_size}|{st.st_mtime_ns}"',
                'return f"{path}|{st.st_size}"',
            )
        ],
        ["tests/test_cache_keys.py", "-k", "changed_in_place"],
    ),
    "issue22-options-auto-budget": (
        "AutoPipeline(memory_budget_mb=0) accepted",
        [
            (
                "d2lft/engine/options.py",
                "AutoPipeline.__post_init__",
                '_check_int("memory_budget_mb", self.memory_budget_mb, 1, none=True)',
                "pass",
            )
        ],
        ["tests/test_options_validation.py", "-k", "refused and AutoPipeline"],
    ),
    "issue22-options-fast-augment": (
        "FastPipeline(augment='bogus') accepted",
        [
            (
                "d2lft/engine/options.py",
                "FastPipeline.__post_init__",
                '_check_choice("augment", self.augment, Augment.__args__)',
                "pass",
            )
        ],
        ["tests/test_options_validation.py", "-k", "refused and FastPipeline"],
    ),
    "issue22-options-dist-timeout": (
        "RunSpec(dist_timeout=0) accepted",
        [
            (
                "d2lft/engine/options.py",
                "RunSpec.__post_init__",
                "if isinstance(t, bool) or not isinstance(t, numbers.Real) "
                "or not 1 <= t <= 86400:",
                "if False:",
            )
        ],
        ["tests/test_options_validation.py", "-k", "refused and RunSpec"],
    ),
    "issue22-confusion-transposed": (
        "the confusion matrix transposed (rows: predicted)",
        [
            (
                "d2lft/inference.py",
                "Evaluation.confusion",
                "np.add.at(m, (self.true, self.pred), 1)",
                "np.add.at(m, (self.pred, self.true), 1)",
            )
        ],
        ["tests/test_confusion.py::test_rows_are_true_classes_and_columns_predictions"],
    ),
    "issue22-confusion-folder-classes": (
        "evaluate takes folder label indices as the net's class indices",
        [
            (
                "d2lft/inference.py",
                "evaluate",
                'true = remap[labels.astype("int64")]',
                'true = labels.astype("int64")',
            )
        ],
        ["tests/test_confusion.py::test_evaluate_counts_folders_as_true_and_outputs_as_predicted"],
    ),
    "issue22-confusion-picture-transposed": (
        "the confusion picture writes count [j, i] in row i, column j",
        [
            (
                "d2lft/plot.py",
                "plot_confusion",
                'f"{m[i, j]}\\n{frac[i, j]:.0%}",',
                'f"{m[j, i]}\\n{frac[j, i]:.0%}",',
            )
        ],
        ["tests/test_confusion.py::test_the_picture_puts_count_i_j_in_row_i_column_j"],
    ),
    "issue22-cli-train-interrupted-0": (
        "d2lft train exits 0 after Ctrl-C",
        [
            (
                "d2lft/cli.py",
                "_train",
                "return 0 if h.completed else EXIT_INTERRUPTED",
                "return 0",
            )
        ],
        ["tests/test_cli_exit.py", "-k", "130 and train-SIGINT"],
    ),
    "issue22-cli-compare-interrupted-0": (
        "d2lft compare exits 0 after SIGTERM",
        [
            (
                "d2lft/cli.py",
                "_compare",
                "return 0 if all(h.completed for h in hs) else EXIT_INTERRUPTED",
                "return 0",
            )
        ],
        ["tests/test_cli_exit.py", "-k", "130 and compare-SIGTERM"],
    ),
    "issue22-cli-sweep-interrupted-0": (
        "d2lft sweep exits 0 after Ctrl-C (the bug this issue found)",
        [
            (
                "d2lft/cli.py",
                "_sweep",
                "return EXIT_INTERRUPTED  # Ctrl-C or SIGTERM ended the sweep (its rows are kept)",
                "return 0",
            )
        ],
        ["tests/test_cli_exit.py", "-k", "130 and sweep-SIGINT"],
    ),
    "issue22-cli-error-exit-1": (
        "d2lft's explained errors exit 1 instead of 2",
        [("d2lft/cli.py", "_main", "return EXIT_ERROR", "return 1")],
        ["tests/test_cli_exit.py", "-k", "bad_data and missing"],
    ),
    # issue 23: files from elsewhere (ONNX metadata, checkpoints, downloads, archives,
    # numbers in the environment, the quick start's loaded data)
    "dl-no-deadline": (
        "downloads: the whole-request deadline is never checked",
        [
            (
                "d2lft/data/hub.py",
                "_Watchdog._limit_passed",
                "if now - self.start > self.deadline:",
                "if False:",
            )
        ],
        ["tests/test_downloads.py::test_trickled_headers_meet_the_whole_request_deadline"],
    ),
    "dl-no-speed-limit": (
        "downloads: the low-speed limit is never checked",
        [
            (
                "d2lft/data/hub.py",
                "_Watchdog._limit_passed",
                "if self.speed_limit > 0:",
                "if False:",
            )
        ],
        ["tests/test_downloads.py::test_trickled_body_meets_the_low_speed_limit"],
    ),
    "dl-watchdog-no-shutdown": (
        "downloads: a passed limit does not shut the download's sockets (a blocked read goes on)",
        [
            (
                "d2lft/data/hub.py",
                "_Watchdog._shut",
                "sock.shutdown(socket.SHUT_RDWR)",
                "sock.fileno()",
            )
        ],
        ["tests/test_downloads.py::test_trickled_headers_meet_the_whole_request_deadline"],
    ),
    "dl-watch-no-dup": (
        "downloads: the watchdog holds the socket TLS detaches, so HTTPS is never shut",
        [("d2lft/data/hub.py", "_Watchdog.watch", "dup = sock.dup()", "dup = sock")],
        ["tests/test_downloads.py::test_the_deadline_ends_a_tls_download_too"],
    ),
    "zip-no-entry-limit": (
        "archives: the number of entries is not bounded (60,000 empty files extracted)",
        [("d2lft/data/hub.py", "_extract_limits", "if len(infos) > most:", "if False:")],
        ["tests/test_downloads.py::test_zip_of_60000_empty_entries_is_refused"],
    ),
    "zip-check-fewer-classes": (
        "archives: the hotdog extraction is checked for 1 class, then refused for 2 (kept)",
        [
            (
                "d2lft/data/hub.py",
                "download_hotdog",
                "archive, extracted, marker=sha1, check=functools.partial(check_splits, "
                "min_classes=2)",
                "archive, extracted, marker=sha1, check=check_splits",
            )
        ],
        ["tests/test_downloads.py::test_a_refused_layout_leaves_no_extraction_in_the_cache"],
    ),
    "cache-deletes-user-file": (
        "cache: a file with the wrong SHA-1 is deleted instead of moved aside",
        [
            (
                "d2lft/data/hub.py",
                "_fetch_locked",
                "aside = set_aside(target, found)",
                "aside = target.unlink() or target",
            )
        ],
        [
            "tests/test_downloads.py::test_a_mismatching_file_in_the_cache_is_moved_aside_not_deleted"
        ],
    ),
    "train-ignores-loaded-data": (
        "quick start: train_fine_tuning(net) downloads d2l's data, not what load_hotdog loaded",
        [
            (
                "d2lft/data/hub.py",
                "default_data",
                "return download_hotdog(**(_last_source or {}))",
                "return download_hotdog()",
            )
        ],
        ["tests/test_downloads.py::test_load_hotdog_then_train_trains_on_the_loaded_data"],
    ),
    "env-no-upper-bound": (
        "environment: numbers are checked for finiteness only (1e308 overflows where used)",
        [
            (
                "d2lft/_sys/env.py",
                "env_number",
                "if not finite or not above or value > high:",
                "if not finite or not above:",
            )
        ],
        ["tests/test_env_limits.py", "-k", "1e308"],
    ),
    "onnx-no-output-count": (
        "ONNX: the graph's number of outputs is not checked against the class names",
        [
            (
                "d2lft/deploy/onnx.py",
                "_check_graph",
                "if len(given_out) != 2 or given_out[1] != n:",
                "if False:",
            )
        ],
        ["tests/test_onnx_metadata.py", "-k", "3-outputs-2-classes"],
    ),
    "onnx-empty-classes": (
        "ONNX: an empty class list is taken",
        [("d2lft/deploy/onnx.py", "_checked_metadata", "or not classes", "or False")],
        ["tests/test_onnx_metadata.py", "-k", "classes-empty"],
    ),
    "onnx-image-size-type": (
        "ONNX: the metadata's image_size is not checked",
        [
            (
                "d2lft/deploy/onnx.py",
                "_checked_metadata",
                "if not _is_int(size) or not MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE:",
                "if False:",
            )
        ],
        ["tests/test_onnx_metadata.py", "-k", "image-size-a-string"],
    ),
    "onnx-image-size-vs-graph": (
        "ONNX: the metadata's image_size is not checked against the graph's input",
        [
            (
                "d2lft/deploy/onnx.py",
                "_check_graph",
                "if want is not None and _is_int(got) and got != want:",
                "if False:",
            )
        ],
        ["tests/test_onnx_metadata.py", "-k", "image-size-disagrees"],
    ),
    "onnx-metadata-not-object": (
        "ONNX: d2lft metadata that is not a JSON object is taken (AttributeError)",
        [
            (
                "d2lft/deploy/onnx.py",
                "_checked_metadata",
                "if not isinstance(info, dict):",
                "if False:",
            )
        ],
        ["tests/test_onnx_metadata.py", "-k", "metadata-not-an-object"],
    ),
    "onnx-format-version-type": (
        "ONNX: a format_version of the wrong type is compared (TypeError)",
        [
            (
                "d2lft/deploy/onnx.py",
                "_checked_metadata",
                "if not _is_int(version) or version < 1:",
                "if False:",
            )
        ],
        ["tests/test_onnx_metadata.py", "-k", "format-version-a-string"],
    ),
    "ckpt-any-backend-name": (
        "checkpoints: any recorded backend name is taken ('tensorflow')",
        [
            (
                "d2lft/io/checkpoint.py",
                "_metadata_problem",
                'if info.get("backend") not in _registry.names():',
                'if not isinstance(info.get("backend"), str):',
            )
        ],
        ["tests/test_checkpoint_fields.py", "-k", "tensorflow"],
    ),
    "ckpt-val-fraction-unchecked": (
        "checkpoints: the recorded val_fraction is not checked",
        [
            (
                "d2lft/io/checkpoint.py",
                "_config_problem",
                "if fraction is not None and not (_is_number(fraction) and 0 < fraction < 1):",
                "if False:",
            )
        ],
        ["tests/test_checkpoint_fields.py", "-k", "val-fraction-abc"],
    ),
    # issue 23: a new user's first hour (progress, evaluate's data, split names, predict,
    # layout hint, notebooks, docs)
    "progress-bar-hidden-on-0x0-tty": (
        "a terminal that reports no size (a pty under `script`) hides tqdm's bar",
        [
            (
                "d2lft/engine/callbacks.py",
                "ProgressBar._open",
                "nrows=None if in_notebook() else rows,",
                "nrows=None,",
            )
        ],
        ["tests/test_progress.py::test_a_terminal_shows_a_bar_with_rate_and_time_left"],
    ),
    "progress-bar-in-logs": (
        "training draws a tqdm bar (carriage returns) into a log file or pipe",
        [
            (
                "d2lft/api.py",
                "default_callbacks",
                "out.append(cb.ProgressBar(bar=cb.want_progress()))",
                "out.append(cb.ProgressBar(bar=True))",
            )
        ],
        ["tests/test_progress.py::test_a_pipe_gets_one_line_per_epoch"],
    ),
    "layout-no-val-fraction-hint": (
        "one folder of class subfolders is not told about --val-fraction",
        [
            (
                "d2lft/data/folders.py",
                "find_split_root",
                'f"(found {found}); {_one_folder_hint(folder, subs)}{EXPECTED_LAYOUT}"',
                'f"(found {found}); {EXPECTED_LAYOUT}"',
            )
        ],
        ["tests/test_first_hour.py::test_one_folder_of_classes_is_told_about_val_fraction"],
    ),
    "layout-hint-without-images": (
        "folders without images are told to use --val-fraction",
        [
            (
                "d2lft/data/folders.py",
                "_one_folder_hint",
                "if not all(_holds_images(p) for p in subs[:20]):",
                "if False:",
            )
        ],
        ["tests/test_first_hour.py::test_no_val_fraction_hint_for_folders_without_images"],
    ),
    "evaluate-downloads-hotdog": (
        "evaluate without --data-dir ignores the data the checkpoint was trained on",
        [
            (
                "d2lft/cli.py",
                "_trained_on",
                'recorded = cfg.get("data_source") if "data_source" in cfg else '
                'cfg.get("data_dir")',
                "recorded = None",
            )
        ],
        ["tests/test_first_hour.py::test_evaluate_scores_the_data_it_was_trained_on"],
    ),
    "data-source-relative": (
        "the checkpoint records the data folder as given (relative to the cwd)",
        [
            (
                "d2lft/api.py",
                "plan_run",
                "data_source=None if data_dir is None else "
                "os.path.abspath(os.path.expanduser(data_dir)),",
                "data_source=None if data_dir is None else str(data_dir),",
            )
        ],
        ["tests/test_first_hour.py::test_evaluate_scores_the_data_it_was_trained_on"],
    ),
    "evaluate-missing-data-unclear": (
        "an older checkpoint's relative data_dir that is missing is not reported as such",
        [("d2lft/cli.py", "_trained_on", "if not path.exists():", "if False:")],
        ["tests/test_first_hour.py::test_evaluate_an_old_checkpoint_with_a_relative_data_dir"],
    ),
    "epoch-line-says-test": (
        "the per-epoch line says 'test acc' after evaluating val/",
        [
            (
                "d2lft/engine/callbacks.py",
                "BookPrinter.on_epoch_end",
                'f"train acc {h.train_acc[-1]:.3f}, {h.eval_split} acc {h.test_acc[-1]:.3f}",',
                'f"train acc {h.train_acc[-1]:.3f}, test acc {h.test_acc[-1]:.3f}",',
            )
        ],
        ["tests/test_first_hour.py::test_val_split_is_called_val_everywhere"],
    ),
    "metrics-json-key-test-acc": (
        "metrics.json keeps the key test_acc after evaluating val/",
        [
            (
                "d2lft/engine/history.py",
                "History.to_dict",
                'd[HELD_OUT_KEY] = d.pop("test_acc")',
                "pass",
            )
        ],
        ["tests/test_first_hour.py::test_val_split_is_called_val_everywhere"],
    ),
    "old-metrics-json-unread": (
        "a metrics.json with the older key test_acc no longer loads",
        [
            (
                "d2lft/engine/history.py",
                "History.from_dict",
                "if HELD_OUT_KEY in d:  # metrics.json since issue 23; `test_acc` before",
                "if True:",
            )
        ],
        ["tests/test_first_hour.py::test_old_metrics_json_still_reads"],
    ),
    "info-says-test": (
        "`d2lft info` says 'test acc' for a run evaluated on val/",
        [
            (
                "d2lft/io/checkpoint.py",
                "Checkpoint.__str__",
                'acc = f", {h.eval_split} acc {h.test_acc[-1]:.3f}" if h.epochs else ""',
                'acc = f", test acc {h.test_acc[-1]:.3f}" if h.epochs else ""',
            )
        ],
        ["tests/test_first_hour.py::test_val_split_is_called_val_everywhere"],
    ),
    "legend-says-test": (
        "the learning curve's legend says 'test' for a run evaluated on val/",
        [
            (
                "d2lft/plot.py",
                "_held_out",
                'return names.pop() if len(names) == 1 else "held-out"',
                'return "test"',
            )
        ],
        ["tests/test_first_hour.py::test_val_split_is_called_val_everywhere"],
    ),
    "predict-stops-at-a-bad-image": (
        "one unreadable image stops predict for all",
        [
            (
                "d2lft/cli.py",
                "cmd_predict",
                "files, preds, bad = _predict_readable(net, files, args.batch_size)",
                "preds, bad = predict(net, files, batch_size=args.batch_size), []",
            )
        ],
        ["tests/test_first_hour.py::test_predict_goes_on_past_a_bad_image"],
    ),
    "predict-partial-exit-0": (
        "predict exits 0 although an image could not be read",
        [("d2lft/cli.py", "cmd_predict", "return EXIT_PARTIAL", "return 0")],
        ["tests/test_first_hour.py::test_predict_goes_on_past_a_bad_image"],
    ),
    "show-mistakes-0-empty-list": (
        "--show-mistakes 0 prints an empty 'worst mistakes' list",
        [
            (
                "d2lft/cli.py",
                "cmd_evaluate",
                "if mistakes and args.show_mistakes > 0:",
                "if mistakes:",
            )
        ],
        ["tests/test_first_hour.py::test_show_mistakes_0_prints_only_their_number"],
    ),
    "notebook-parameters-untagged": (
        "the notebooks' parameters cell is not tagged for papermill",
        [("examples/chapter_torch.ipynb", '     "parameters"', '     "params"')],
        ["tests/test_notebooks.py::test_the_parameters_cell_is_tagged_for_papermill"],
    ),
    "notebook-test-split-only": (
        "the notebooks read only a test/ split (no val/ layout)",
        [
            (
                "examples/chapter_mxnet.ipynb",
                '    "test_imgs = d2lft.image_folder(held_out(folder))"',
                '    "test_imgs = d2lft.image_folder(folder / \\"test\\")"',
            )
        ],
        ["tests/test_notebooks.py::test_notebooks_run_on_tiny_data[mxnet]"],
    ),
    # issue 23: the launcher's signals and the messages that say the right thing
    "launcher-signals-not-relayed": (
        "SIGTERM to the launcher of --nproc kills it at once; the job goes on training",
        [
            (
                "d2lft/launch.py",
                "_Job.__enter__",
                "self._old[sig] = signal.signal(sig, self._on_signal)",
                "self._old[sig] = signal.getsignal(sig)",
            )
        ],
        [
            "tests/test_launcher_signals.py::"
            "test_a_signal_to_the_launcher_stops_the_whole_job[torch-SIGTERM]"
        ],
    ),
    "launcher-no-kill-after-grace": (
        "what ignores the relayed signal is never killed: the launcher waits for ever",
        [("d2lft/launch.py", "_Job.stop", "os.kill(pid, signal.SIGKILL)", "os.kill(pid, 0)")],
        [
            "tests/test_launcher_signals.py::"
            "test_what_ignores_the_signal_is_killed_after_the_grace_period"
        ],
    ),
    "launcher-loses-grandchildren": (
        "processes in sessions of their own (torchrun's workers) are not tracked",
        [("d2lft/launch.py", "_Job.remember", "self.family.update(_descendants(p.pid))", "pass")],
        [
            "tests/test_launcher_signals.py::"
            "test_what_ignores_the_signal_is_killed_after_the_grace_period"
        ],
    ),
    "launcher-shows-framework-stderr": (
        "the frameworks' tracebacks are shown again, before d2lft's line",
        [
            (
                "d2lft/launch.py",
                "_Job._copy",
                'if line.startswith("d2lft") and line not in self._shown:',
                "if line not in self._shown:",
            )
        ],
        [
            "tests/test_launcher_signals.py::"
            "test_what_ignores_the_signal_is_killed_after_the_grace_period"
        ],
    ),
    "launcher-interrupt-said-failed": (
        "a signalled job is reported as 'the 2-worker job failed (exit status 130)'",
        [("d2lft/cli.py", "_job_ended", "if outcome.signal:", "if False:")],
        [
            "tests/test_launcher_signals.py::"
            "test_a_signal_to_the_launcher_stops_the_whole_job[mxnet-SIGINT]"
        ],
    ),
    "cli-error-no-flag": (
        "a library error's parameter is not named by its flag (serve --checkpoint)",
        [
            (
                "d2lft/cli.py",
                "_error_line",
                'return f"{flag}: {text}" if flag else text',
                "return text",
            )
        ],
        ["tests/test_messages.py", "-k", "missing_checkpoint"],
    ),
    "fifo-said-missing": (
        "a FIFO given as a file is reported as 'no such file'",
        [
            (
                "d2lft/_sys/errors.py",
                "not_a_file",
                'return f"not a regular file but {kind}"',
                'return "no such file"',
            )
        ],
        ["tests/test_messages.py", "-k", "fifos"],
    ),
    "atomic-names-temp-file": (
        "a write onto a folder (export --out dir.onnx) names the temporary file",
        [
            (
                "d2lft/_sys/atomic.py",
                "atomic_path",
                "if err.errno is None or err.filename not in (None, os.fspath(tmp)):",
                "if err.errno is None or err.filename is not None:",
            )
        ],
        ["tests/test_messages.py", "-k", "write_onto_a_folder"],
    ),
    "warnings-show-source": (
        "warnings show d2lft's file, line and source code",
        [
            (
                "d2lft/cli.py",
                "main",
                "shown, warnings.showwarning = warnings.showwarning, _show_warning(args.command)",
                "shown = warnings.showwarning",
            )
        ],
        ["tests/test_messages.py", "-k", "warnings"],
    ),
    # issue 23: nothing lost (one owner per --out, --overwrite or refuse, the earlier
    # run kept until the new one has a checkpoint, export's file is d2lft's, the chapter)
    "out-lock-ignored": (
        "a second run into a folder that another run owns is let in",
        [("d2lft/_sys/locks.py", "own_folder", "if lock is None:", "if False:")],
        [
            "tests/test_outputs.py::test_second_train_into_the_same_out_is_refused_at_once_naming_the_first",
            "tests/test_outputs.py::test_api_checkpoint_folder_is_owned_by_its_run_until_that_process_ends",
        ],
    ),
    "api-checkpoint-dir-unowned": (
        "train_fine_tuning does not own its checkpoint_dir while it runs",
        [
            (
                "d2lft/api.py",
                "train",
                "folder = plan.run.checkpoint_dir if plan.rank == 0 else None",
                "folder = None",
            )
        ],
        [
            "tests/test_outputs.py::test_api_checkpoint_folder_is_owned_by_its_run_until_that_process_ends"
        ],
    ),
    "overwrite-clears-first": (
        "--overwrite removes the earlier run's files before training starts",
        [
            (
                "d2lft/cli.py",
                "_run",
                "h = api.train(job.net, plan, [replace] if replace else [])",
                "replace and replace.on_epoch_end(None)\n"
                "h = api.train(job.net, plan, [replace] if replace else [])",
            )
        ],
        ["tests/test_outputs.py::test_overwrite_run_that_diverges_leaves_the_earlier_run_whole"],
    ),
    "overwrite-no-epoch-writes-metrics": (
        "an --overwrite run stopped before its first epoch writes its empty metrics",
        [
            (
                "d2lft/cli.py",
                "_run",
                "if replace and not replace.done:  # no epoch: nothing to replace the earlier "
                "run with",
                "if False:  # no epoch: nothing to replace the earlier run with",
            )
        ],
        [
            "tests/test_outputs.py::test_overwrite_run_stopped_before_its_first_epoch_leaves_the_earlier_run"
        ],
    ),
    "overwrite-keeps-old-outputs": (
        "--overwrite leaves the earlier run's exported model.onnx beside the new run",
        [
            (
                "d2lft/cli_guard.py",
                "ReplaceRun.on_epoch_end",
                "gone = [n for n in RUN_FILES if n != FILE_NAME] + "
                "sorted(outputs.written(self.out))",
                "gone = [n for n in RUN_FILES if n != FILE_NAME] + []",
            )
        ],
        ["tests/test_outputs.py::test_export_beside_the_checkpoint_does_not_block_retraining"],
    ),
    "export-not-recorded": (
        "export does not record model.onnx as d2lft's: retraining there is refused",
        [
            (
                "d2lft/cli.py",
                "cmd_export",
                "outputs.record(path)  # d2lft's: a later train --out into its folder may "
                "replace it",
                "pass  # d2lft's: a later train --out into its folder may replace it",
            )
        ],
        ["tests/test_outputs.py::test_export_beside_the_checkpoint_does_not_block_retraining"],
    ),
    "recorded-outputs-ignored": (
        "a run folder's record of d2lft's outputs is not read",
        [
            (
                "d2lft/io/checkpoint.py",
                "check_checkpoint_dir",
                "ours = written(path)",
                "ours = set()",
            )
        ],
        ["tests/test_outputs.py::test_export_beside_the_checkpoint_does_not_block_retraining"],
    ),
    "recorded-output-edited": (
        "a recorded output that the user replaced still counts as d2lft's",
        [
            (
                "d2lft/_sys/outputs.py",
                "written",
                "if same and _digest(path) == list(recorded):",
                "if path.is_file():",
            )
        ],
        ["tests/test_outputs.py::test_export_beside_the_checkpoint_does_not_block_retraining"],
    ),
    "file-out-overwritten": (
        "export, predict and show write over an existing --out without --overwrite",
        [("d2lft/cli_guard.py", "check_file_out", "if not overwrite:", "if False:")],
        [
            "tests/test_outputs.py::test_every_command_refuses_an_existing_output_without_overwrite[export]",
            "tests/test_outputs.py::test_every_command_refuses_an_existing_output_without_overwrite[predict]",
            "tests/test_outputs.py::test_every_command_refuses_an_existing_output_without_overwrite[show]",
        ],
    ),
    "evaluate-out-overwritten": (
        "evaluate --out writes over an existing evaluation.json",
        [
            (
                "d2lft/cli.py",
                "cmd_evaluate",
                "cli_guard.check_outputs(args.out, cli_guard.EVALUATE_FILES, "
                "overwrite=args.overwrite)",
                "cli_guard.check_outputs(args.out, (), overwrite=args.overwrite)",
            )
        ],
        [
            "tests/test_outputs.py::test_every_command_refuses_an_existing_output_without_overwrite[evaluate]"
        ],
    ),
    "chapter-table-indexerror": (
        "the chapter's table fails on a run stopped before its first epoch",
        [
            (
                "examples/_chapter.py",
                "print_comparison",
                "if h is not None and h.epochs:",
                "if h is not None:",
            )
        ],
        ["tests/test_outputs.py::test_chapter_stopped_in_the_scratch_run_keeps_the_finetune_run"],
    ),
    "chapter-run-written-at-end": (
        "the chapter writes a run's History only after both runs",
        [
            (
                "examples/_chapter.py",
                "finished",
                'h.to_json(out / f"{backend}-{name}.json")',
                "pass",
            )
        ],
        ["tests/test_outputs.py::test_chapter_stopped_in_the_scratch_run_keeps_the_finetune_run"],
    ),
    "chapter-stopped-exits-0": (
        "the chapter stopped by SIGTERM exits 0",
        [
            (
                "examples/_chapter.py",
                "run",
                "if not all(h.completed for h in runs.values()):",
                "if False:",
            )
        ],
        ["tests/test_outputs.py::test_chapter_stopped_in_the_scratch_run_keeps_the_finetune_run"],
    ),
    "chapter-sh-installs-always": (
        "scripts/chapter.sh runs setup.sh (pip) on every run",
        [("scripts/chapter.sh", "if [ -x .venv/bin/python ] &&", "if false &&")],
        ["tests/test_outputs.py::test_chapter_sh_installs_once"],
    ),
    # issue 23: nobody let in (d2lft serve's doors); issue 22: the server's LAN warning
    "serve-any-host": (
        "d2lft serve: a request for any Host name is answered (DNS rebinding)",
        [
            (
                "d2lft/deploy/serve.py",
                "_Guard.__call__",
                "if name is None or not (name in self.allowed or _is_ip(name)):",
                "if False:",
            )
        ],
        ["tests/test_serve.py::test_host_names_and_origins_that_are_not_the_servers_are_refused"],
    ),
    "serve-allow-host-ignored": (
        "d2lft serve: --allow-host names are refused like any foreign name",
        [
            (
                "d2lft/deploy/serve.py",
                "_Guard.__init__",
                'self.allowed = {"localhost"} | {h.strip("[]").lower() for h in allowed_hosts}',
                'self.allowed = {"localhost"}',
            )
        ],
        ["tests/test_serve.py::test_host_names_and_origins_that_are_not_the_servers_are_refused"],
    ),
    "serve-foreign-origin": (
        "d2lft serve: a POST from another site's page is answered",
        [
            (
                "d2lft/deploy/serve.py",
                "_Guard.__call__",
                'if scope["method"] not in self.SAFE and not self.same_origin(origin, host):',
                "if False:",
            )
        ],
        ["tests/test_serve.py::test_host_names_and_origins_that_are_not_the_servers_are_refused"],
    ),
    "serve-no-security-headers": (
        "d2lft serve: no CSP, X-Frame-Options or nosniff on the answers",
        [
            (
                "d2lft/deploy/serve.py",
                "secured",
                'message = dict(message, headers=[*message.get("headers", []), *self.headers])',
                "message = message",
            )
        ],
        ["tests/test_serve.py::test_security_headers_and_no_paths_in_the_api"],
    ),
    "serve-csp-wrong-hash": (
        "d2lft serve: the CSP names a hash that is not the page script's (the page stops working)",
        [
            (
                "d2lft/deploy/serve.py",
                "hashes",
                "digests = [base64.b64encode(hashlib.sha256(t.encode()).digest()).decode() for "
                "t in found]",
                "digests = [base64.b64encode(hashlib.sha256(t.strip().encode()).digest())"
                ".decode() for t in found]",
            )
        ],
        ["tests/test_serve.py::test_security_headers_and_no_paths_in_the_api"],
    ),
    "serve-path-leak": (
        "d2lft serve: /api/info tells clients where the checkpoint is",
        [
            (
                "d2lft/deploy/serve.py",
                "_describe",
                '"source": _file_name(ck.path) if ck is not None else "a network built in this '
                'session",',
                '"source": str(ck.path) if ck is not None else "a network built in this session",',
            )
        ],
        ["tests/test_serve.py::test_security_headers_and_no_paths_in_the_api"],
    ),
    "serve-no-header-deadline": (
        "d2lft serve: a client that trickles its headers (or sends nothing) holds its connection",
        [
            (
                "d2lft/deploy/serve.py",
                "_GuardedProtocol.headers_due",
                "self.close(self.slow_headers if self.spoke else None)",
                "pass",
            )
        ],
        ["tests/test_serve.py::test_slow_and_idle_clients_are_cut_off"],
    ),
    "serve-no-body-deadline": (
        "d2lft serve: a client that trickles its upload holds its connection",
        [
            (
                "d2lft/deploy/serve.py",
                "_GuardedProtocol.watch",
                "self.body_timer = self.loop.call_later(self.body_timeout, self.body_due, cycle)",
                "self.body_timer = None",
            )
        ],
        ["tests/test_serve.py::test_slow_and_idle_clients_are_cut_off"],
    ),
    "serve-keep-alive-ignored": (
        "d2lft serve: --keep-alive is not passed to uvicorn",
        [
            (
                "d2lft/deploy/serve.py",
                "serve",
                "timeout_keep_alive=keep_alive,",
                "timeout_keep_alive=30,",
            )
        ],
        ["tests/test_serve.py::test_slow_and_idle_clients_are_cut_off"],
    ),
    "serve-no-room": (
        "d2lft serve: idle connections beyond --max-connections are all kept open",
        [
            (
                "d2lft/deploy/serve.py",
                "_GuardedProtocol.make_room",
                "min(idle, key=lambda c: c.opened).close()",
                "pass",
            )
        ],
        ["tests/test_serve.py::test_half_open_connections_beyond_the_cap_make_room"],
    ),
    "serve-fd-limit-ignored": (
        "d2lft serve: the connection cap ignores the file-descriptor limit",
        [
            (
                "d2lft/deploy/serve.py",
                "serve",
                "cap, fd_warning = connection_budget(int(max_connections))",
                "cap, fd_warning = int(max_connections), None",
            )
        ],
        ["tests/test_serve.py::test_the_server_answers_under_a_low_file_limit"],
    ),
    "serve-fd-not-raised": (
        "d2lft serve: the soft file limit is never raised toward the hard one",
        [
            (
                "d2lft/deploy/serve.py",
                "connection_budget",
                "resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))",
                "raise OSError",
            )
        ],
        [
            "tests/test_serve.py::test_the_file_limit_is_raised_toward_the_hard_limit_and_the_cap_fits_it"
        ],
    ),
    "serve-disconnect-traceback": (
        "d2lft serve: a client leaving mid-upload logs a ClientDisconnect traceback",
        [
            (
                "d2lft/deploy/serve.py",
                "api_predict",
                "except ClientDisconnect:  # one line, not a traceback",
                "except ImportError:  # one line, not a traceback",
            )
        ],
        ["tests/test_serve.py::test_a_client_leaving_mid_upload_is_one_log_line"],
    ),
    "serve-no-lan-warning": (
        "d2lft serve --host 0.0.0.0 does not warn that anyone on the network can use it",
        [("d2lft/deploy/serve.py", "serve", "if not is_loopback(host):", "if False:")],
        ["tests/test_serve.py::test_serve_warns_when_anyone_on_the_network_can_use_it"],
    ),
    # issue 22: green on every CPU (bf16 probe) and the suite's tiers
    "torch-auto-bf16-everywhere": (
        "torch precision='auto': bf16 on a CPU without bf16 units (slow emulation)",
        [
            (
                "d2lft/backends/torch/runtime.py",
                "resolve_precision",
                'ok = cpu_has_bf16() if precision == "auto" else True',
                "ok = True",
            )
        ],
        ["tests/test_portability.py", "-k", "auto_precision and torch and no-bf16"],
    ),
    "mxnet-bf16-no-probe": (
        "benchmarks/mxnet_bf16.py: no bf16 probe, a traceback on an AVX2-only CPU",
        [("benchmarks/mxnet_bf16.py", "main", "why = bf16_probe()", "why = None")],
        ["tests/test_benchmarks.py", "-k", "avx2"],
    ),
}


def _definitions(tree, name):
    """The definitions in `tree` called `name`: functions and methods (``Class.method``
    names the method of one class), classes, and assigned names (a module's constant)."""
    cls, _, fn = name.rpartition(".")
    scopes = [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and n.name == cls]
    nodes = [c for s in scopes for c in s.body] if cls else list(ast.walk(tree))
    out = []
    for node in nodes:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.name == fn:
                out.append(node)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == fn for t in targets):
                out.append(node)
    return out


def edit_text(text: str, edit) -> str:
    """`text` with one mutant edit applied (LookupError when it does not apply)."""
    if len(edit) == 3:
        _, old, new = edit
        if text.count(old) != 1:
            raise LookupError(f"the text to replace occurs {text.count(old)} times: {old!r}")
        return text.replace(old, new)
    _, function, old_line, new_line = edit
    lines = text.splitlines(keepends=True)
    defs = _definitions(ast.parse(text), function)
    if not defs:
        raise LookupError(f"no function, class or name {function!r}")
    hits = [
        i
        for d in defs
        for i in range(d.lineno - 1, d.end_lineno)
        if lines[i].strip() == old_line.strip()
    ]
    if len(hits) != 1:
        raise LookupError(f"{function}() has {len(hits)} lines reading {old_line.strip()!r}")
    i = hits[0]
    line = lines[i]
    indent = line[: len(line) - len(line.lstrip())]
    ending = line[len(line.rstrip("\r\n")) :]
    lines[i] = "".join(indent + part + ending for part in new_line.split("\n"))
    return "".join(lines)


def apply(root: pathlib.Path, edits):
    for edit in edits:
        path = root / edit[0]
        try:
            path.write_text(edit_text(path.read_text(), edit))
        except LookupError as err:
            raise LookupError(f"{edit[0]}: {err}") from None


def check_applies(ids=None):
    """[(id, error)] of the mutants that no longer apply to today's sources."""
    bad = []
    for mid in ids or MUTANTS:
        for edit in MUTANTS[mid][1]:
            try:
                edit_text((REPO / edit[0]).read_text(), edit)
            except LookupError as err:
                bad.append((mid, f"{edit[0]}: {err}"))
    return bad


def run(mid, keep=False) -> tuple[bool, float]:
    what, edits, tests = MUTANTS[mid]
    with tempfile.TemporaryDirectory(prefix=f"d2lft-mutant-{mid}-") as tmp:
        root = pathlib.Path(tmp)
        for name in ("d2lft", "tests", "scripts", "benchmarks", "examples"):
            if (REPO / name).exists():
                shutil.copytree(
                    REPO / name,
                    root / name,
                    ignore=shutil.ignore_patterns("__pycache__", "results"),
                )
        for name in ("pyproject.toml", "setup.cfg", "README.md"):
            shutil.copy2(REPO / name, root / name)
        apply(root, edits)
        env = dict(os.environ, PYTHONPATH=str(root), D2LFT_PROGRESS="0")
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
        )
        seconds = time.perf_counter() - t0
        if proc.returncode not in (0, 1):  # 2-5: interrupted, usage error, nothing collected
            raise RuntimeError(f"{mid}: pytest exited {proc.returncode}:\n{proc.stdout[-3000:]}")
        if keep or proc.returncode == 0:
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(("E ", "FAILED"))]
            print("\n".join(lines[:12]) if keep and lines else proc.stdout[-2000:])
        return proc.returncode == 1, seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ids", nargs="*", help="mutant ids (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument(
        "--show",
        action="store_true",
        help="print the end of each pytest run (why a mutant was killed)",
    )
    args = parser.parse_args(argv)
    unknown = [i for i in args.ids if i not in MUTANTS]
    if unknown:
        parser.error(f"unknown mutant(s) {unknown}; see --list")
    ids = args.ids or list(MUTANTS)
    if args.list:
        for mid in ids:
            what, _, tests = MUTANTS[mid]
            print(f"{mid}: {what}\n    killed by: {' '.join(tests)}")
        return 0
    stale = check_applies(ids)
    for mid, why in stale:
        print(f"{mid}: does not apply: {why}")
    survived = []
    for mid in ids:
        if any(mid == s for s, _ in stale):
            continue
        killed, seconds = run(mid, keep=args.show)
        print(
            f"{'killed  ' if killed else 'SURVIVED'} {mid} ({seconds:.0f} s): {MUTANTS[mid][0]}",
            flush=True,
        )
        if not killed:
            survived.append(mid)
    print(f"{len(ids) - len(survived) - len(stale)} of {len(ids)} killed")
    return 1 if survived or stale else 0


if __name__ == "__main__":
    sys.exit(main())
