"""Shared fixtures: tiny generated image folders (`tiny`, `tiny_folder`, `toy_data`), a
trained checkpoint per backend (`trained_checkpoint`), backend parametrisation, one
torch thread by default, ../shared; and the markers of the suite's tiers (pyproject.toml:
`-m torch`, `-m "not slow"`, ...; `bash scripts/test.sh --quick` is the quick tier)."""

from __future__ import annotations

import fnmatch
import math
import os
import pathlib

import numpy as np
import pytest

os.environ.setdefault("D2LFT_PROGRESS", "0")
os.environ.setdefault("MPLBACKEND", "Agg")

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def make_image_folder(
    root, n_train=24, n_test=8, size=(40, 48), classes=("hotdog", "not-hotdog"), seed=0, fmt="jpg"
):
    """An easy, separable two-colour dataset in the hotdog layout (root/train/<c>/...)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    colors = [(220, 40, 40), (40, 40, 220), (40, 200, 40), (200, 200, 40)]
    root = pathlib.Path(root)
    for split, n in (("train", n_train), ("test", n_test)):
        for c, color in zip(classes, colors, strict=False):
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                h, w = size
                arr = np.clip(np.array(color) + rng.normal(0, 25, (h, w, 3)), 0, 255)
                Image.fromarray(arr.astype("uint8")).save(d / f"{i}.{fmt}")
    return root


def ks_stat(a, b):
    """Two-sample Kolmogorov-Smirnov statistic."""
    a, b = np.sort(np.asarray(a, float)), np.sort(np.asarray(b, float))
    grid = np.concatenate([a, b])
    return float(
        np.max(
            np.abs(
                np.searchsorted(a, grid, "right") / len(a)
                - np.searchsorted(b, grid, "right") / len(b)
            )
        )
    )


def ks_limit(n, m, alpha=1e-3):
    """Critical KS value: a correct sampler exceeds it with probability ~alpha."""
    c = math.sqrt(-0.5 * math.log(alpha / 2))
    return c * math.sqrt((n + m) / (n * m))


@pytest.fixture(scope="session")
def toy_data(tmp_path_factory):
    """A tiny separable dataset: 2 classes x (24 train + 8 test) images of 40x48 px."""
    return make_image_folder(tmp_path_factory.mktemp("toy") / "hotdog")


@pytest.fixture(params=["torch", "mxnet"])
def backend(request):
    """Run the test under each backend (skipped when its framework is missing)."""
    import d2lft
    from d2lft.backends import _registry as _backend

    name = request.param
    try:
        _backend.load(name)
    except ImportError as err:  # pragma: no cover - environment without the framework
        pytest.skip(str(err))
    with d2lft.using(name):
        yield name


@pytest.fixture
def shared_data():
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is absent (real stand-in data only exists beside the repo)")
    return SHARED_DATA


#: the `tiny` data's defaults (a module's own `TINY = dict(...)` overrides them)
TINY = dict(n_train=8, n_test=4, size=(36, 36))


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    """The one tiny-data factory: ``tiny_folder(name="hotdog", **options)`` makes a fresh
    folder of generated images (:func:`make_image_folder`; defaults :data:`TINY`)."""

    def make(name="hotdog", **options):
        return make_image_folder(tmp_path_factory.mktemp("tiny") / name, **{**TINY, **options})

    return make


@pytest.fixture(scope="module")
def tiny(request, tiny_folder):
    """This module's tiny data, made once: :data:`TINY`, overridden by the module's own
    ``TINY = dict(...)`` (e.g. ``dict(n_train=4, n_test=2, size=(20, 20))``)."""
    return tiny_folder(**getattr(request.module, "TINY", {}))


@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory, tiny_folder):
    """``trained_checkpoint(backend)``: the folder of a tiny 1-epoch scratch run of that
    backend (32 px, on its own :data:`TINY` data), trained and saved once per session.
    For tests that need some trained checkpoint, not a particular one: read it, never
    write into it."""
    import d2lft

    made = {}

    def get(backend):
        if backend not in made:
            data = tiny_folder("ckdata")
            out = tmp_path_factory.mktemp(f"trained-{backend}") / "run"
            with d2lft.using(backend):
                net = d2lft.build_scratch_net(2, seed=0)
                d2lft.train_fine_tuning(
                    net, 0.01, batch_size=8, num_epochs=1, param_group=False, data_dir=data,
                    image_size=32, seed=0, run=d2lft.RunSpec(verbose=False, checkpoint_dir=out),
                )  # fmt: skip
            made[backend] = out
        return made[backend]

    return get


@pytest.fixture(autouse=True)
def _one_torch_thread_by_default(request):
    """Every test runs with one torch compute thread (tiny batches run many times faster
    on a busy 2-core machine), except those marked ``@pytest.mark.torch_threads``, which
    get the count d2lft gives a fresh process (its thread handling, test_backend.py). Either
    way the count is put back after the test, so no test leaves another one its count."""
    try:
        import torch

        import d2lft.backends.torch  # noqa: F401  (its import sets the count: before ours)
    except ImportError:  # pragma: no cover - environment without torch
        yield
        return
    from d2lft._sys.threads import torch_default_threads

    before = torch.get_num_threads()
    marked = request.node.get_closest_marker("torch_threads") is not None
    # a marked test starts from the count d2lft gives a fresh process, whatever an
    # earlier import (MXNet's drops torch's threads) or test left behind
    torch.set_num_threads(torch_default_threads() if marked else 1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def one_torch_thread():
    """One torch compute thread (the default for every test now; kept for the tests
    that name it)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


FRAMEWORKS = ("torch", "mxnet")

#: The quick tier (`bash scripts/test.sh --quick`: the `quick` tests, less any slow
#: surface): per test file, the tests (fnmatch patterns on the test's name with its
#: parameters) that show its features' happy path, cheaply; with the book oracle and
#: parity tests. A test may also carry @pytest.mark.quick itself. tests/test_portability.py
#: checks that every test file has an entry ([] for the slow surfaces) and every
#: pattern selects a test.
QUICK = {
    "test_architecture.py": ["test_no_import_cycle", "test_the_public_api_is_typed"],
    "test_args.py": ["test_bad_learning_rate[[]*-nan]", "test_bad_counts[[]*-0-batch_size]"],
    "test_backend.py": ["test_use_and_using_nest_and_restore", "test_env_var_selects_backend"],
    "test_batches.py": ["test_evaluation_batches_equal_the_frameworks_own[[]*-book]"],
    "test_benchmarks.py": ["test_mxnet_bf16_without_bf16_says_so_in_one_line"],
    "test_book_oracle.py": ["*"],
    "test_checkpoint.py": [
        "test_checkpoint_holds_what_is_needed[[]torch]",
        "test_ctrl_c_keeps_history_and_last_complete_checkpoint_*[[]torch]",
    ],
    "test_cli.py": ["test_other_commands_in_process"],
    "test_data.py": ["test_download_then_cache_*", "test_load_hotdog_end_to_end[[]torch]"],
    "test_distributed.py": [],  # the slow surfaces: the full suite only
    "test_docs_site.py": [],
    "test_engine.py": [
        "test_one_loop_drives_every_pipeline_with_the_documented_events[[]torch-fast]",
        "test_history_config_is_the_options_serialised",
    ],
    "test_exercises.py": ["test_lr_sweep_table_plot_and_divergence[[]torch]", "test_split_is_*"],
    "test_exif.py": ["test_decoders_turn_photos_upright[[]6]"],
    "test_export.py": ["test_export_matches_the_framework_logits[[]torch-resnet18_v1]"],
    "test_fast_path.py": [
        "test_fallback_matches_torchvision_exactly",
        "test_mxnet_batches",
        "test_fast_resume_continues_exactly[[]torch-fp32]",
    ],
    "test_file_modes.py": ["test_written_files_follow_the_umask[[]18]"],
    "test_first_contact.py": ["test_help_shows_every_default"],
    "test_freeze.py": ["test_freeze_trains_only_the_head[[]torch-book]"],
    "test_gpu_decode.py": ["test_only_cuda_devices_decode"],
    "test_heap.py": ["test_retain_reuses_the_block_then_restores"],
    "test_hostile.py": ["test_zip_bomb_is_refused_before_anything_is_written"],
    "test_image_folders.py": ["test_suffixes_hidden_files_and_subfolders_are_listed_alike"],
    "test_layouts.py": ["test_the_held_out_split_rule[[]held1-*]", "test_training_*[[]torch]"],
    "test_memory_bound.py": ["test_auto_is_the_default_and_runs_fast_*[[]torch]"],
    "test_models.py": ["test_head_shape_and_10x_multiplier[[]*-2]"],
    "test_mutants.py": ["*"],
    "test_notebooks.py": [],
    "test_numpy_mode.py": ["test_build_and_forward[[]numpy]"],
    "test_parity.py": [
        "test_logits_agree_eval_and_train_mode[[]torch-mxnet-resnet18_v1]",
        "test_loss_trajectories_agree_step_by_step[[]resnet18_v1-mxnet-torch]",
    ],
    "test_pictures.py": ["test_learning_curves_have_whole_epoch_ticks[[]3-*]"],
    "test_portability.py": ["test_auto_precision_*[[]torch-*]", "test_*_by_default"],
    "test_predict.py": [
        "test_predict_names_probabilities_and_input_kinds[[]torch]",
        "test_evaluate_matches_training_accuracy_and_orders_mistakes[[]torch]",
    ],
    "test_serve.py": ["test_page_info_and_predictions_match_the_api"],
    "test_train.py": ["test_scratch_learns_separable_data[[]*]", "test_history_json_file"],
    "test_weights.py": ["test_params_move_between_backends_exactly[[]torch-mxnet-resnet18_v1]"],
    "test_early_stopping.py": ["test_auto_mode_*", "test_min_delta_counts_in_both_modes*"],
    "test_callbacks.py": ["test_every_on_train_end_runs_when_earlier_ones_raise"],
    "test_speed.py": ["test_examples_per_sec_counts_only_the_training_steps"],
    "test_resume_checks.py": ["test_a_checkpoint_from_a_newer_d2lft_is_refused"],
    "test_shared_folders.py": ["test_another_hosts_temporary_files_are_never_reclaimed*"],
    "test_image_modes.py": ["test_every_mode_scales_to_0_255*"],
    "test_cache_keys.py": [],
    "test_options_validation.py": ["*"],
    "test_confusion.py": ["test_rows_are_true_classes_and_columns_predictions"],
    "test_cli_exit.py": ["test_a_bad_argument_exits_2*"],
    "test_outputs.py": ["test_every_command_with_an_out_is_in_the_table"],
    "test_launcher_signals.py": [],  # real distributed jobs: the full suite only
    "test_messages.py": ["test_library_errors_carry_the_parameter_and_positionals_get_no_flag"],
    "test_downloads.py": ["test_trickled_headers_meet_the_whole_request_deadline"],
    "test_env_limits.py": ["test_values_in_range_are_taken*"],
    "test_onnx_metadata.py": ["test_a_real_export_passes_the_checks"],
    "test_checkpoint_fields.py": ["test_a_bad_recorded_value_is_named_as_the_checkpoints*"],
    "test_progress.py": ["test_progress_switch*", "test_duration_words"],
    "test_first_hour.py": ["test_one_folder_of_classes_is_told_about_val_fraction"],
}


def quick_patterns(item) -> list[str]:
    return QUICK.get(pathlib.Path(str(item.fspath)).name, [])


def pytest_collection_modifyitems(config, items):
    """Markers from what a test runs: ``torch`` / ``mxnet`` where a parameter (the
    `backend` fixture's, or any other such as parity's `src`/`dst`) names the
    framework, ``browser`` where it drives Chromium, ``quick`` from :data:`QUICK`. And a
    test that reads ../shared/data must say so with @pytest.mark.shared (so that
    `-m "not shared"` deselects them)."""
    for item in items:
        callspec = getattr(item, "callspec", None)
        values = {v for v in callspec.params.values() if isinstance(v, str)} if callspec else ()
        for name in FRAMEWORKS:
            if name in values:
                item.add_marker(name)
        if "browser_page" in getattr(item, "fixturenames", ()):
            item.add_marker("browser")
        if any(fnmatch.fnmatchcase(item.name, pat) for pat in quick_patterns(item)):
            item.add_marker("quick")
    unmarked = [
        i.nodeid
        for i in items
        if "shared_data" in getattr(i, "fixturenames", ())
        and i.get_closest_marker("shared") is None
    ]
    if unmarked:
        raise pytest.UsageError(f"tests using shared_data need @pytest.mark.shared: {unmarked}")


def make_pipeline(name, **options):
    """A pipeline option object from its name ('book', 'fast', 'fixed') and options,
    for tests parametrised over pipelines."""
    from d2lft.engine.options import PIPELINES

    return PIPELINES[name](**options)
