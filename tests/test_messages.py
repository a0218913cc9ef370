"""Messages that say the right thing (issue 23, section 5).

- A library error names the parameter at fault (``err.param``) and the command shows
  that parameter's flag (the options' own metadata, or the command's parser), with no
  rewriting of the message: `serve --checkpoint /nonexistent` names --checkpoint.
- A FIFO (or another special file) given where a file is read is "not a regular file",
  never opened (opening a FIFO would wait for a writer forever).
- A write whose target is a folder names the user's path, not the temporary file.
- A warning is the command's own one line, not a line of d2lft's source code.
"""

from __future__ import annotations

import contextlib
import io
import os
import pathlib
import subprocess
import sys
import threading

import pytest
from conftest import make_image_folder

from d2lft import cli
from d2lft._sys.atomic import atomic_write_text
from d2lft._sys.errors import naming, not_a_file, param_of

REPO = pathlib.Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def fifo(path):
    """A FIFO at `path`. A reader that opens it anyway is let go at once (a writer opens
    and closes it: the reader sees an empty file), so a regression fails, not hangs."""
    os.mkfifo(path)
    done = threading.Event()

    def release():
        while not done.wait(0.1):
            with contextlib.suppress(OSError):  # ENXIO: no reader waiting
                os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))

    t = threading.Thread(target=release, daemon=True)
    t.start()
    try:
        yield pathlib.Path(path)
    finally:
        done.set()
        t.join()


def _err(capsys, argv) -> str:
    assert cli.main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines  # one line, no traceback
    return lines[0]


@pytest.mark.parametrize(
    "argv",
    [
        ["serve", "--port", "0", "--checkpoint"],
        ["evaluate", "--checkpoint"],
        ["export", "--checkpoint"],
        ["predict", "x.jpg", "--checkpoint"],
    ],
)
def test_a_missing_checkpoint_names_the_commands_flag(argv, tmp_path, capsys):
    """`--checkpoint /nonexistent` is named as --checkpoint (it once read "(--out  or
    --out)": a regex rewrote the library's words into flags and garbled the hint)."""
    missing = tmp_path / "nonexistent"
    line = _err(capsys, [*argv, str(missing)])
    command = argv[0]
    assert line.startswith(f"d2lft {command}: error: --checkpoint: no checkpoint at {missing}")
    assert "no such file" in line and "--out" not in line and "=" not in line


def test_library_errors_carry_the_parameter_and_positionals_get_no_flag(tmp_path, capsys):
    import d2lft

    with pytest.raises(FileNotFoundError) as err:
        d2lft.read_checkpoint(tmp_path / "none")
    assert param_of(err.value) == "checkpoint" and "--" not in str(err.value)
    line = _err(capsys, ["info", str(tmp_path / "none")])  # CHECKPOINT is positional
    assert line.startswith(f"d2lft info: error: no checkpoint at {tmp_path / 'none'}")
    # an option field's own metadata gives its flag (checkpoint_dir is set by --out)
    args = cli.build_parser().parse_args(["train"])
    assert cli._flag_of("checkpoint_dir", args) == "--out"
    assert cli._flag_of("val_fraction", args) == "--val-fraction"
    assert cli._flag_of("no_such_parameter", args) is None
    assert cli._error_line(naming(ValueError("bad"), "seed"), args) == "--seed: bad"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("msg") / "d", n_train=2, n_test=2)


def test_fifos_are_not_regular_files_wherever_a_file_is_read(tiny, tmp_path, capsys):
    """--pretrained, --checkpoint (safetensors and .onnx), --data-dir (a .zip),
    --source-classes and the API's weights reader: each says "not a regular file"."""
    import d2lft
    from d2lft.data.hub import resolve_data_dir
    from d2lft.data.split import resolve_images
    from d2lft.exercises.head_init import read_class_names
    from d2lft.io.weights import read_params

    train = ["train", "--data-dir", str(tiny), "--out", str(tmp_path / "o"), "--epochs", "1"]
    with fifo(tmp_path / "w.safetensors") as w:
        line = _err(capsys, [*train, "--pretrained", str(w)])
        assert f"--pretrained {w}: not a regular file but a FIFO" in line
        for argv in (["info", str(w)], ["evaluate", "--checkpoint", str(w)]):
            line = _err(capsys, argv)
            assert f"no checkpoint at {w}: not a regular file but a FIFO" in line
        with pytest.raises(FileNotFoundError, match="is not a regular file but a FIFO"):
            read_params(w)
        with pytest.raises(FileNotFoundError, match="not a regular file but a FIFO"):
            d2lft.read_checkpoint(w)
    with fifo(tmp_path / "m.onnx") as m:
        line = _err(capsys, ["predict", "--checkpoint", str(m), str(tiny)])
        assert line.startswith("d2lft predict: error: --checkpoint: no ONNX model")
        assert "not a regular file but a FIFO" in line
    with fifo(tmp_path / "d.zip") as z:
        line = _err(capsys, ["train", "--data-dir", str(z), "--out", str(tmp_path / "o")])
        assert f"{z} is not a regular file but a FIFO" in line
        line = _err(capsys, ["show", "--data-dir", str(z), "--out", str(tmp_path / "s.png")])
        assert f"{z} is not a regular file but a FIFO" in line
        with pytest.raises(ValueError, match="not a regular file but a FIFO"):
            resolve_images(z, 0.5)  # ONE folder (or zip) of classes, split here
        with pytest.raises(ValueError, match="not a regular file but a FIFO"):
            resolve_data_dir(z)  # a train/ + test/ folder or zip
    with fifo(tmp_path / "classes.txt") as c:
        with pytest.raises(FileNotFoundError, match="not a regular file but a FIFO") as err:
            read_class_names(c)
        assert param_of(err.value) == "source_classes"
    assert not_a_file(tmp_path) == "a folder, not a file"
    assert not_a_file(tmp_path / "absent") == "no such file"


def test_a_write_onto_a_folder_names_the_users_path(tmp_path, capsys):
    """`export --out dir.onnx` (a folder): the error names dir.onnx, not the temporary
    file beside it (atomic writes rename a temporary file into place)."""
    folder = tmp_path / "dir.onnx"
    folder.mkdir()
    with pytest.raises(IsADirectoryError) as err:
        atomic_write_text(folder, "x")
    assert err.value.filename == str(folder)
    assert sorted(os.listdir(tmp_path)) == ["dir.onnx"]  # no temporary file left
    args = cli.build_parser().parse_args(["export", "--checkpoint", "c", "--out", str(folder)])
    line = cli._error_line(err.value, args)
    assert line == f"cannot use {folder}: it is a folder; choose another --out"


def _env():
    return dict(os.environ, PYTHONPATH=str(REPO), D2LFT_PROGRESS="0", OMP_NUM_THREADS="1")


def test_warnings_are_the_commands_own_lines(tmp_path):
    """A warning reads "d2lft show: warning: ...", not d2lft's source file, line and
    code (`cli.py:618: UserWarning: ... classes, samples = list_images(split)`)."""
    data = make_image_folder(tmp_path / "d", n_train=2, n_test=1)
    with fifo(data / "train" / "hotdog" / "pipe.jpg"):
        p = subprocess.run(
            [sys.executable, "-m", "d2lft", "show", "--data-dir", str(data)]
            + ["--out", str(tmp_path / "s.png"), "--n", "2"],
            capture_output=True,
            text=True,
            env=_env(),
            timeout=120,
        )
    assert p.returncode == 0, p.stderr
    lines = p.stderr.strip().splitlines()
    assert lines == [
        f"d2lft show: warning: skipped 1 file(s) in {data / 'train'} that are not regular "
        f"files (FIFOs, sockets or devices; never read): {data / 'train' / 'hotdog' / 'pipe.jpg'}"
    ], p.stderr
    # a warning from another package names its origin; the previous handler comes back
    buf = io.StringIO()
    cli._show_warning("train")("deprecated\n  thing", UserWarning, "/x/torch/nn.py", 7, buf)
    assert buf.getvalue() == "d2lft train: warning: deprecated thing (UserWarning from nn.py:7)\n"
    import warnings

    before = warnings.showwarning
    assert cli.main(["info", str(tmp_path / "none")]) == 2
    assert warnings.showwarning is before
