"""Issue 23, "nothing lost": every output path of every command.

- A run owns its --out while it runs: a second `d2lft train` into it (a real second
  process) is refused at once with a message that names the first; the API's
  checkpoint folder likewise.
- Every command that writes refuses an existing output unless --overwrite is given
  (one table walks them all, and a command with an --out that is not in the table
  fails the walk).
- An --overwrite run replaces the earlier run only once it has a checkpoint: one that
  diverges, or is stopped before its first epoch ends, leaves the earlier run whole.
- What `export` wrote beside a checkpoint is d2lft's: retraining there with
  --overwrite is not refused (a user's file in its place still is).
- The chapter's script keeps a finished run when the next one is stopped (exit 130),
  and installs once.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, make_image_folder
from test_hostile import TRAIN
from test_hostile import child_env as hostile_env

import d2lft
from d2lft import cli
from d2lft._sys import locks

LIMIT = 120  # seconds: the most any child process here may run

#: a worker-side hook (the children's sitecustomize): with $TEST_GATE set, training
#: waits at the start of each epoch until the file $TEST_GATE exists, after touching
#: $TEST_GATE.started (the scratch run only when $TEST_GATE_SCRATCH is set)
GATE_HOOK = """
import os, pathlib, time
gate = os.environ.get("TEST_GATE")
if gate:
    import d2lft.api as api

    real = api.default_callbacks

    class _Gate:
        def on_epoch_begin(self, state):
            pathlib.Path(gate + ".started").touch()
            while not os.path.exists(gate):
                time.sleep(0.02)

    def default_callbacks(plan):
        wait = not os.environ.get("TEST_GATE_SCRATCH") or not plan.param_group
        return [*real(plan), *([_Gate()] if wait else [])]

    api.default_callbacks = default_callbacks
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_image_folder(
        tmp_path_factory.mktemp("tiny") / "hotdog", n_train=4, n_test=2, size=(20, 20)
    )


@pytest.fixture(scope="module")
def hook(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hook")
    (folder / "sitecustomize.py").write_text(GATE_HOOK)
    return folder


def child_env(home, hook=None, **extra):
    """test_hostile's environment for a child, with this checkout (and `hook`) first
    on its path and no folder owned by this process passed down."""
    env = hostile_env(home, **extra)
    path = [str(REPO), *([str(hook)] if hook else []), os.environ.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(path)
    env.pop(locks.OWNED_ENV, None)
    return env


def wait_for(predicate, timeout, what, proc=None):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the child ended before {what}: {proc.communicate()}")
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@contextlib.contextmanager
def started(argv, env):
    """A child process running `argv`, killed if the test leaves it running."""
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def train_argv(data, out, *extra):
    """test_hostile's tiny `train scratch` (torch, 1 epoch, 16 px; a later flag wins)."""
    return [*TRAIN, "--data-dir", str(data), "--out", str(out), *map(str, extra)]


def files_of(folder) -> dict:
    """{name: bytes} of the files in `folder` (hidden ones left out)."""
    folder = pathlib.Path(folder)
    return {
        p.name: p.read_bytes()
        for p in sorted(folder.iterdir())
        if p.is_file() and not p.name.startswith(".")
    }


def one_line(err: str, *fragments):
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    """A run folder from `d2lft train` (torch, 1 epoch)."""
    out = tmp_path_factory.mktemp("trained") / "run"
    with d2lft.using("torch"):
        assert cli.main(train_argv(tiny, out, "--seed", 0)) == 0
    return out


def needs_onnx():
    for name in ("onnx", "onnxruntime"):
        pytest.importorskip(name, reason="the onnx extra: pip install 'd2lft[onnx]'")


# --------------------------------------------------------------------------- one owner


def test_second_train_into_the_same_out_is_refused_at_once_naming_the_first(tiny, hook, tmp_path):
    out = tmp_path / "same"
    gate = tmp_path / "gate"
    env = child_env(tmp_path / "home", hook, TEST_GATE=gate)
    first = [sys.executable, "-m", "d2lft", *train_argv(tiny, out, "--seed", 1, "--lr", 0.001)]
    with started(first, env) as a:
        wait_for(lambda: pathlib.Path(f"{gate}.started").exists(), LIMIT, "run A to train", a)
        t0 = time.monotonic()
        b = subprocess.run(
            [sys.executable, "-m", "d2lft", *train_argv(tiny, out, "--seed", 2, "--lr", 0.002)],
            capture_output=True,
            text=True,
            env=child_env(tmp_path / "home"),
            timeout=LIMIT,
        )
        seconds = time.monotonic() - t0
        assert b.returncode == 2, (b.stdout, b.stderr)
        line = one_line(b.stderr, "d2lft train: error: --out", "being written by another run")
        assert f"pid {a.pid} on " in line and "started 20" in line  # who, since when
        assert "--seed 1 --lr 0.001" in line  # and its command
        assert "epoch" not in b.stdout and "outputs in" not in b.stdout
        assert seconds < 30, seconds  # refused at once, not after training
        gate.touch()  # let A finish: its run is the one in --out
        stdout, stderr = a.communicate(timeout=LIMIT)
        assert a.returncode == 0, stderr
    h = d2lft.History.from_json(out / "metrics.json")
    assert h.config["seed"] == 1 and h.config["learning_rate"] == 0.001
    assert d2lft.read_checkpoint(out).config["seed"] == 1
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".d2lft-owner")) in (
        [],
        [locks.OWNER_LOCK],
    )  # who owned it is forgotten once A ends


def test_api_checkpoint_folder_is_owned_by_its_run_until_that_process_ends(
    tiny, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("D2LFT_HOME", str(tmp_path / "home"))
    run = tmp_path / "run"
    ready = tmp_path / "ready"
    code = (
        "import pathlib, time\n"
        "from d2lft._sys import locks\n"
        f"with locks.own_folder({str(run)!r}):\n"
        f"    pathlib.Path({str(ready)!r}).touch()\n"
        "    time.sleep(120)\n"
    )
    with started([sys.executable, "-c", code], child_env(tmp_path / "home")) as holder:
        wait_for(ready.exists, LIMIT, "the holder to own the folder", holder)
        with d2lft.using("torch"):
            net = d2lft.build_scratch_net(2, seed=0)
            spec = d2lft.RunSpec(checkpoint_dir=run, verbose=False)
            kw = dict(data_dir=tiny, image_size=16, run=spec)
            with pytest.raises(locks.FolderInUse, match=f"pid {holder.pid} on .*-c .*own_folder"):
                d2lft.train_fine_tuning(net, 1e-3, 4, 1, **kw)
            assert not (run / "checkpoint.safetensors").exists()
            # the commands that train refuse it too, at once
            sweep = ["sweep", *train_argv(tiny, run)[2:], "--lrs", "1e-3", "--modes", "scratch"]
            for argv in (train_argv(tiny, run), ["compare", *train_argv(tiny, run)[2:]], sweep):
                assert cli.main(argv) == 2
                one_line(capsys.readouterr().err, "--out", f"another run (pid {holder.pid} ")
            assert sorted(os.listdir(run)) == sorted([locks.OWNER_LOCK, locks.OWNER_INFO])
            holder.send_signal(signal.SIGKILL)  # its lock dies with it
            holder.wait(timeout=LIMIT)
            h = d2lft.train_fine_tuning(net, 1e-3, 4, 1, **kw)
    assert h.completed and d2lft.read_checkpoint(run).epoch == 1


# --------------------------------------------------------------------------- --overwrite or refuse


def _png(path):
    from PIL import Image

    Image.new("RGB", (5, 5), "green").save(path)


def _user_file(path, make, ctx):
    path.parent.mkdir(parents=True, exist_ok=True)
    if make == "png":
        _png(path)
    elif make == "run":
        shutil.copytree(ctx["run"], path.parent, dirs_exist_ok=True)
    else:
        path.write_bytes(b"mine")
    return path.read_bytes()


#: every command that writes: (its arguments, given ctx {data, run, image, tmp};
#: the output that is there before it runs, relative to tmp; how that output is made:
#: "mine" bytes, a PNG picture, or an earlier run). A new command with --out goes here.
WRITERS = {
    "train": (lambda c: train_argv(c["data"], c["tmp"] / "o"), "o/checkpoint.safetensors", "run"),
    "compare": (
        lambda c: ["compare", *train_argv(c["data"], c["tmp"] / "o")[2:], "--pretrained", "none"],
        "o/compare.json",
        "mine",
    ),
    "sweep": (
        lambda c: [
            "sweep",
            *train_argv(c["data"], c["tmp"] / "o")[2:],
            "--lrs",
            "1e-3",
            "--modes",
            "scratch",
        ],
        "o/sweep.json",
        "mine",
    ),
    "evaluate": (
        lambda c: [
            "evaluate",
            "--checkpoint",
            c["run"],
            "--data-dir",
            c["data"],
            "--out",
            c["tmp"] / "o",
        ],
        "o/evaluation.json",
        "mine",
    ),
    "predict": (
        lambda c: ["predict", "--checkpoint", c["run"], c["image"], "--out", c["tmp"] / "p.png"],
        "p.png",
        "png",
    ),
    "show": (
        lambda c: ["show", "--data-dir", c["data"], "--n", "1", "--out", c["tmp"] / "s.png"],
        "s.png",
        "png",
    ),
    "export": (
        lambda c: ["export", "--checkpoint", c["run"], "--out", c["tmp"] / "n.onnx"],
        "n.onnx",
        "mine",
    ),
}


def test_every_command_with_an_out_is_in_the_table():
    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if a.dest == "command"]
    writing = sorted(
        name
        for name, p in sub.choices.items()
        if any("--out" in a.option_strings for a in p._actions)
    )
    assert writing == sorted(WRITERS)
    for name in writing:  # and each of them takes --overwrite
        assert any("--overwrite" in a.option_strings for a in sub.choices[name]._actions), name


@pytest.mark.parametrize("command", sorted(WRITERS))
def test_every_command_refuses_an_existing_output_without_overwrite(
    command, tiny, trained, tmp_path, capsys, monkeypatch, one_torch_thread
):
    monkeypatch.setenv("D2LFT_HOME", str(tmp_path / "home"))
    if command == "export":
        needs_onnx()
    argv_of, target, make = WRITERS[command]
    ctx = dict(
        data=tiny,
        run=trained,
        image=tiny / "test" / "hotdog" / "0.jpg",
        tmp=tmp_path,
    )
    argv = [str(a) for a in argv_of(ctx)]
    path = tmp_path / target
    before = _user_file(path, make, ctx)
    with d2lft.using("torch"):
        assert cli.main(argv) == 2
        one_line(capsys.readouterr().err, f"d2lft {command}: error: ", "--overwrite")
        assert path.read_bytes() == before  # untouched
        assert cli.main([*argv, "--overwrite"]) == 0, capsys.readouterr().err
    assert path.read_bytes() != before  # replaced, as asked


# --------------------------------------------------------------------------- --overwrite: later


def test_overwrite_run_that_diverges_leaves_the_earlier_run_whole(
    tiny, trained, tmp_path, capsys, monkeypatch, one_torch_thread
):
    monkeypatch.setenv("D2LFT_HOME", str(tmp_path / "home"))
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    before = files_of(run)
    assert set(before) == {"checkpoint.safetensors", "metrics.json", "learning_curve.png"}
    with d2lft.using("torch"):
        code = cli.main(train_argv(tiny, run, "--overwrite", "--lr", "1e30"))
    assert code == 2
    one_line(capsys.readouterr().err, "diverged")
    assert files_of(run) == before
    assert [p.name for p in run.iterdir() if p.name.endswith(".tmp")] == []
    # a run that ends well replaces it whole
    with d2lft.using("torch"):
        assert cli.main(train_argv(tiny, run, "--overwrite", "--lr", "0.002")) == 0
    after = files_of(run)
    assert set(after) == set(before)
    assert all(after[n] != before[n] for n in ("checkpoint.safetensors", "metrics.json"))
    assert d2lft.read_checkpoint(run).config["learning_rate"] == 0.002


def test_overwrite_run_stopped_before_its_first_epoch_leaves_the_earlier_run(
    tiny, trained, hook, tmp_path
):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    before = files_of(run)
    gate = tmp_path / "gate"  # never opened: the run waits in its first epoch
    env = child_env(tmp_path / "home", hook, TEST_GATE=gate)
    argv = [sys.executable, "-m", "d2lft", *train_argv(tiny, run, "--overwrite", "--lr", 0.01)]
    with started(argv, env) as proc:
        wait_for(lambda: pathlib.Path(f"{gate}.started").exists(), LIMIT, "training", proc)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=LIMIT)
    assert proc.returncode == 130, (stdout, stderr)
    assert f"{run} is left as it was" in stdout
    assert files_of(run) == before


def test_export_beside_the_checkpoint_does_not_block_retraining(
    tiny, trained, tmp_path, capsys, monkeypatch, one_torch_thread
):
    needs_onnx()
    monkeypatch.setenv("D2LFT_HOME", str(tmp_path / "home"))
    run = tmp_path / "ants"
    shutil.copytree(trained, run)
    with d2lft.using("torch"):
        assert cli.main(["export", "--checkpoint", str(run)]) == 0  # run/model.onnx
        assert (run / "model.onnx").is_file()
        assert cli.main(train_argv(tiny, run, "--overwrite")) == 0, capsys.readouterr().err
        # the exported model belonged to the run it replaced
        assert not (run / "model.onnx").exists()
        assert cli.main(["export", "--checkpoint", str(run)]) == 0
        (run / "model.onnx").write_bytes(b"my own model")  # the user's file now
        capsys.readouterr()
        assert cli.main(train_argv(tiny, run, "--overwrite")) == 2
    one_line(capsys.readouterr().err, "did not write (model.onnx)")
    assert (run / "model.onnx").read_bytes() == b"my own model"


# --------------------------------------------------------------------------- the chapter's script


def test_chapter_stopped_in_the_scratch_run_keeps_the_finetune_run(tiny, hook, tmp_path):
    out = tmp_path / "chapter"
    gate = tmp_path / "gate"  # never opened: the scratch run waits in its first epoch
    env = child_env(tmp_path / "home", hook, TEST_GATE=gate, TEST_GATE_SCRATCH=1)
    argv = [
        sys.executable,
        str(REPO / "examples" / "finetune_torch.py"),
        *("--data-dir", tiny, "--pretrained", "none", "--arch", "resnet18_v1"),
        *("--image-size", 16, "--epochs", 1, "--batch-size", 4, "--out", out),
    ]
    with started([str(a) for a in argv], env) as proc:
        wait_for(lambda: pathlib.Path(f"{gate}.started").exists(), LIMIT, "the scratch run", proc)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=LIMIT)
    assert proc.returncode == 130, (stdout, stderr)
    assert "Traceback" not in stderr and "interrupted" in stderr
    finetune = d2lft.History.from_json(out / "torch-finetune.json")
    assert finetune.epochs == 1 and finetune.completed
    assert not d2lft.History.from_json(out / "torch-scratch.json").completed
    table = stdout[stdout.index("comparison") :]
    assert "finetune" in table and "scratch   stopped before its first epoch ended" in table
    assert (out / "torch-curves.png").is_file()


def test_chapter_sh_installs_once(tmp_path):
    tree = tmp_path / "repo"
    (tree / "scripts").mkdir(parents=True)
    (tree / "examples").mkdir()
    shutil.copy(REPO / "scripts" / "chapter.sh", tree / "scripts")
    for name in ("setup.cfg", "pyproject.toml"):
        shutil.copy(REPO / name, tree)
    (tree / "scripts" / "setup.sh").write_text('echo setup >>"$(dirname "$0")/../calls"\n')
    for tab in ("torch", "mxnet"):
        (tree / "examples" / f"finetune_{tab}.py").write_text(f"print('ran {tab}')\n")
    (tree / "d2lft").symlink_to(REPO / "d2lft")
    venv = tree / ".venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "python").write_text(f'#!/bin/sh\nPYTHONPATH="{tree}" exec "{sys.executable}" "$@"\n')
    (venv / "python").chmod(0o755)

    def chapter():
        p = subprocess.run(
            ["bash", str(tree / "scripts" / "chapter.sh")],
            capture_output=True,
            text=True,
            timeout=LIMIT,
            env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        )
        assert p.returncode == 0, p.stderr
        assert "ran torch" in p.stdout and "ran mxnet" in p.stdout
        calls = tree / "calls"
        return calls.read_text().count("setup") if calls.exists() else 0

    assert chapter() == 1  # never installed: install
    assert chapter() == 1  # installed: not again
    with open(tree / "setup.cfg", "a") as f:
        f.write("\n# a new dependency\n")
    assert chapter() == 2  # the project's requirements changed: install again
    assert chapter() == 2
    (tree / "d2lft").unlink()  # .venv's d2lft is not this checkout's
    (tree / "d2lft").mkdir()
    assert chapter() == 3
