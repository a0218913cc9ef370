"""The `d2lft` command end to end: subprocesses for train / predict / evaluate / show and
the error path, in-process `main()` for the rest. Tiny data: 32 px, 1 epoch."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

import d2lft
from d2lft import cli

PNG = b"\x89PNG\r\n\x1a\n"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run(args, tmp_path, console=False, check=True):
    env = dict(
        os.environ,
        OMP_NUM_THREADS="1",
        D2LFT_PROGRESS="0",
        MPLBACKEND="Agg",
        D2LFT_HOME=str(tmp_path / "home"),
    )
    env.pop("D2LFT_BACKEND", None)
    if console:
        cmd = [str(pathlib.Path(sys.executable).with_name("d2lft"))]
    else:
        cmd = [sys.executable, "-m", "d2lft"]
    p = subprocess.run(
        cmd + [str(a) for a in args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    if check and p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}\n{p.stdout}\n{p.stderr}")
    return p


def png_ok(path):
    data = pathlib.Path(path).read_bytes()
    return data.startswith(PNG) and len(data) > 3000


@pytest.mark.slow
def test_train_predict_evaluate_show_end_to_end(tiny, tmp_path):
    out = tmp_path / "run"
    p = run(
        [
            "train",
            "finetune",
            "--backend",
            "torch",
            "--data-dir",
            tiny,
            "--epochs",
            1,
            "--image-size",
            32,
            "--batch-size",
            8,
            "--pretrained",
            "none",
            "--seed",
            0,
            "--out",
            out,
        ],
        tmp_path,
        console=True,
    )
    assert "finetune on torch: 2 classes ['hotdog', 'not-hotdog'], lr 5e-05" in p.stdout
    assert "examples/sec on [cpu]" in p.stdout and "checkpoint.safetensors" in p.stdout
    assert sorted(x.name for x in out.iterdir()) == [
        "checkpoint.safetensors",
        "learning_curve.png",
        "metrics.json",
    ]
    h = d2lft.History.from_json(out / "metrics.json")
    assert h.backend == "torch" and h.epochs == 1 and h.completed
    assert h.config["learning_rate"] == 5e-5 and h.config["classes"] == ["hotdog", "not-hotdog"]
    assert png_ok(out / "learning_curve.png")
    ck = d2lft.read_checkpoint(out)
    assert ck.epoch == 1 and ck.classes == ["hotdog", "not-hotdog"] and ck.image_size == 32

    # predict in the OTHER backend from the torch checkpoint (files and a folder)
    img = tiny / "test" / "hotdog" / "0.jpg"
    p = run(
        [
            "predict",
            "--backend",
            "mxnet",
            "--checkpoint",
            out,
            img,
            tiny / "test" / "not-hotdog",
            "--json",
        ],
        tmp_path,
    )
    preds = json.loads(p.stdout)
    assert len(preds) == 5 and preds[0]["source"] == str(img)
    assert all(x["label"] in ("hotdog", "not-hotdog") for x in preds)
    assert all(abs(sum(x["probabilities"].values()) - 1) < 1e-4 for x in preds)
    with d2lft.using("torch"):  # what the torch net itself says (each backend resizes with
        want = d2lft.predict(d2lft.load_checkpoint(out), [img])[0]  # its own tab's Resize)
    assert preds[0]["probability"] == pytest.approx(want.probability, abs=5e-3)

    p = run(
        [
            "evaluate",
            "--checkpoint",
            out / "checkpoint.safetensors",
            "--data-dir",
            tiny,
            "--out",
            tmp_path / "eval",
        ],
        tmp_path,
    )
    assert "accuracy" in p.stdout and "true \\ predicted" in p.stdout
    assert f"scored the test/ folder of {tiny}" in p.stdout
    ev = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert ev["num_images"] == 8 and sum(map(sum, ev["confusion"])) == 8
    assert ev["accuracy"] == pytest.approx(h.test_acc[-1])  # the training's own test acc
    assert png_ok(tmp_path / "eval" / "confusion.png")
    assert png_ok(tmp_path / "eval" / "predictions.png")

    p = run(["show", "--data-dir", tiny, "--n", 3, "--out", tmp_path / "show.png"], tmp_path)
    assert "2 classes x 3 images" in p.stdout and png_ok(tmp_path / "show.png")


def test_errors_are_one_clear_message(tiny, tmp_path):
    p = run(
        ["train", "--data-dir", tmp_path / "nowhere", "--out", tmp_path / "o"],
        tmp_path,
        check=False,
    )
    assert p.returncode == 2
    assert "d2lft train: error:" in p.stderr and "does not exist" in p.stderr
    assert "expected layout" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "o").exists()
    p = run(["train", "--lr", "0", "--data-dir", tiny], tmp_path, check=False)
    assert p.returncode == 2 and "--lr: must be a finite number > 0" in p.stderr
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{}" + b" " * 20)
    p = run(
        ["predict", "--checkpoint", bad, tiny / "test" / "hotdog" / "0.jpg"], tmp_path, check=False
    )
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "not a d2lft checkpoint" in p.stderr or "cannot be read" in p.stderr


def test_other_commands_in_process(tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("D2LFT_HOME", str(tmp_path / "home"))
    common = [
        "--data-dir",
        str(tiny),
        "--epochs",
        "1",
        "--image-size",
        "32",
        "--batch-size",
        "8",
        "--pretrained",
        "none",
    ]
    # compare: fine-tune vs scratch with the book's mxnet rates
    assert (
        cli.main(["compare", "--backend", "mxnet", *common, "--out", str(tmp_path / "cmp")]) == 0
    )
    out = capsys.readouterr().out
    assert "mxnet   finetune       0.01" in out and "mxnet   scratch         0.1" in out
    rows = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert [r["mode"] for r in rows] == ["finetune", "scratch"]
    assert png_ok(tmp_path / "cmp" / "compare.png")
    assert d2lft.read_checkpoint(tmp_path / "cmp" / "scratch").kind == "scratch"
    # sweep (exercise 1): a table, JSON and the accuracy-vs-lr picture
    assert (
        cli.main(
            [
                "sweep",
                "--backend",
                "torch",
                *common,
                "--lrs",
                "1e-4",
                "1e30",
                "--modes",
                "scratch",
                "--out",
                str(tmp_path / "sw"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "diverged" in out
    rows = json.loads((tmp_path / "sw" / "sweep.json").read_text())
    assert [r["diverged"] for r in rows] == [False, True]
    assert png_ok(tmp_path / "sw" / "sweep.png")
    # train --resume continues the run in --out to more epochs; info verifies the hash
    run_dir = str(tmp_path / "cmp" / "finetune")
    assert (
        cli.main(
            [
                "train",
                "--backend",
                "mxnet",
                *common[:2],
                "--epochs",
                "2",
                *common[4:],
                "--out",
                run_dir,
                "--resume",
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert cli.main(["info", run_dir]) == 0
    out = capsys.readouterr().out
    assert "epoch 2" in out and "hash verified" in out
    h = d2lft.History.from_json(pathlib.Path(run_dir) / "metrics.json")
    assert h.epochs == 2 and h.config["resumed_from"]["epoch"] == 1
    assert cli.main(["train", "scratch", "--pretrained", "x.pth", *common[:2]]) == 2
    assert "--pretrained is for 'finetune'" in capsys.readouterr().err
    assert cli.main(["train", "--pretrained", "x.pth", *common[:2]]) == 2
    assert "--pretrained x.pth: no such file" in capsys.readouterr().err


def test_own_folder_val_fraction_and_init_head(tmp_path, capsys, monkeypatch):
    """`train --data-dir ONE_FOLDER --val-fraction` and `--init-head` (exercise 4) with a
    local source model and its class-name file."""
    import torch
    import torchvision
    from PIL import Image

    monkeypatch.setenv("D2LFT_HOME", str(tmp_path / "home"))
    for c, color in (("hotdog", "red"), ("other", "blue")):
        (tmp_path / "mine" / c).mkdir(parents=True)
        for i in range(5):
            Image.new("RGB", (40, 40), color).save(tmp_path / "mine" / c / f"{i}.png")
    torch.manual_seed(0)
    src = torchvision.models.resnet18(num_classes=3)
    torch.save(src.state_dict(), tmp_path / "src.pth")
    (tmp_path / "names.txt").write_text("ramen\nhot dog\ntaco\n")
    assert (
        cli.main(
            [
                "train",
                "--backend",
                "torch",
                "--data-dir",
                str(tmp_path / "mine"),
                "--val-fraction",
                "0.4",
                "--epochs",
                "1",
                "--image-size",
                "32",
                "--batch-size",
                "4",
                "--pretrained",
                str(tmp_path / "src.pth"),
                "--arch",
                "resnet18_v1",
                "--init-head",
                "hotdog=hot dog",
                "--source-classes",
                str(tmp_path / "names.txt"),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "head row 'hotdog' initialised from source class 1 'hot dog'" in out
    assert "2 classes ['hotdog', 'other']" in out
    ck = d2lft.read_checkpoint(tmp_path / "o")
    assert ck.classes == ["hotdog", "other"]
    folder = d2lft.History.from_json(tmp_path / "o" / "metrics.json").config["data_dir"]
    split = json.loads((pathlib.Path(folder) / "split.json").read_text())
    assert {c: len(v) for c, v in split["test"].items()} == {"hotdog": 2, "other": 2}


def test_show_from_a_url_checked_by_sha1(tiny, tmp_path, capsys, monkeypatch):
    """`--data-dir URL --sha1` downloads once (loopback server), checks, extracts, uses."""
    import functools
    import hashlib
    import http.server
    import threading
    import zipfile

    monkeypatch.setenv("D2LFT_HOME", str(tmp_path / "home"))
    site = tmp_path / "site"
    site.mkdir()
    with zipfile.ZipFile(site / "toy.zip", "w") as zf:
        for p in tiny.rglob("*.jpg"):
            zf.write(p, p.relative_to(tiny.parent))
    sha1 = hashlib.sha1((site / "toy.zip").read_bytes()).hexdigest()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/toy.zip"
    try:
        assert (
            cli.main(["show", "--data-dir", url, "--n", "2", "--out", str(tmp_path / "s.png")])
            == 2
        )
        assert "also pass --sha1" in capsys.readouterr().err
        assert (
            cli.main(
                [
                    "show",
                    "--data-dir",
                    url,
                    "--sha1",
                    "0" * 40,
                    "--n",
                    "2",
                    "--out",
                    str(tmp_path / "s.png"),
                ]
            )
            == 2
        )
        assert "does not match" in capsys.readouterr().err
        assert not (tmp_path / "s.png").exists()
        assert (
            cli.main(
                [
                    "show",
                    "--data-dir",
                    url,
                    "--sha1",
                    sha1,
                    "--n",
                    "2",
                    "--out",
                    str(tmp_path / "s.png"),
                ]
            )
            == 0
        )
        assert "2 classes x 2 images" in capsys.readouterr().out
        assert png_ok(tmp_path / "s.png")
    finally:
        server.shutdown()
        server.server_close()


def _one_folder(root, n=5):
    """ONE folder of class subfolders (no train/ and test/): root/<class>/<i>.png."""
    from PIL import Image

    for c, color in (("red", (220, 40, 40)), ("blue", (40, 40, 220))):
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.new("RGB", (36, 36), tuple(v + 3 * i for v in color)).save(root / c / f"{i}.png")
    return root


def test_evaluate_uses_the_checkpoints_val_fraction(tmp_path, capsys, monkeypatch):
    """Bug: `d2lft evaluate --checkpoint RUN --data-dir chairs/` scored every image of a
    folder that training had split with val_fraction, training images included."""
    from d2lft.data.split import resolve_images

    monkeypatch.setenv("D2LFT_HOME", str(tmp_path / "home"))
    mine = _one_folder(tmp_path / "chairs")
    plan = json.loads((resolve_images(mine, 0.4) / "split.json").read_text())
    held = {f for files in plan["test"].values() for f in files}
    kept = {f for files in plan["train"].values() for f in files}
    assert len(held) == 4 and len(kept) == 6
    with d2lft.using("torch"):
        net = d2lft.build_finetune_net(pretrained=False)
        h = d2lft.train_fine_tuning(
            net,
            5e-05,
            batch_size=4,
            num_epochs=1,
            data_dir=mine,
            image_size=32,
            seed=0,
            run=d2lft.RunSpec(val_fraction=0.4, verbose=False),
        )
        run_dir = tmp_path / "run"
        d2lft.save_checkpoint(net, run_dir, epoch=h.epochs, history=h)
    assert d2lft.read_checkpoint(run_dir).config["val_fraction"] == 0.4

    def evaluate(*extra, out=None):
        argv = ["evaluate", "--checkpoint", str(run_dir), "--data-dir", str(mine), *extra]
        if out:
            argv += ["--out", str(tmp_path / out)]
        code = cli.main(argv)
        text = capsys.readouterr()
        return code, text.out, text.err

    code, out, _ = evaluate(out="ev")
    assert code == 0
    assert "'test' split (the images training held out)" in out
    assert "val_fraction 0.4 (recorded in" in out and "checkpoint.safetensors" in out
    ev = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert ev["num_images"] == 4 and sum(map(sum, ev["confusion"])) == 4
    assert ev["accuracy"] == pytest.approx(h.test_acc[-1])  # training's own test set
    assert {m["path"] for m in ev["mistakes"]} <= held  # the user's own files
    assert png_ok(tmp_path / "ev" / "predictions.png")
    # --val-fraction overrides the recorded one; --split all scores every image
    code, out, _ = evaluate("--val-fraction", "0.2", out="ev2")
    assert code == 0 and "val_fraction 0.2 (--val-fraction)" in out
    assert json.loads((tmp_path / "ev2" / "evaluation.json").read_text())["num_images"] == 2
    code, out, _ = evaluate("--split", "all", out="ev3")
    assert code == 0 and "scored every image of" in out
    assert json.loads((tmp_path / "ev3" / "evaluation.json").read_text())["num_images"] == 10
    # a checkpoint that records no val_fraction: refused, one line saying what to pass
    d2lft.save_checkpoint(net, tmp_path / "plain", epoch=1)
    run_dir = tmp_path / "plain"
    code, _, err = evaluate()
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "d2lft evaluate: error:" in err and "has no test/ folder" in err
    assert "--val-fraction" in err and "--split all" in err
    assert (
        "--split NAME|all"
        in cli.build_parser()._subparsers._group_actions[0].choices["evaluate"].format_help()
    )


def test_evaluate_after_train_with_val_fraction(tmp_path, capsys, monkeypatch):
    """`d2lft train --data-dir ONE_FOLDER --val-fraction F`, then `d2lft evaluate` on the
    same folder without --val-fraction: the held-out images of the same split."""
    monkeypatch.setenv("D2LFT_HOME", str(tmp_path / "home"))
    mine = _one_folder(tmp_path / "chairs")
    assert (
        cli.main(
            [
                "train",
                "--backend",
                "torch",
                "--data-dir",
                str(mine),
                "--val-fraction",
                "0.4",
                "--epochs",
                "1",
                "--image-size",
                "32",
                "--batch-size",
                "4",
                "--pretrained",
                "none",
                "--seed",
                "0",
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 0
    )
    capsys.readouterr()
    h = d2lft.History.from_json(tmp_path / "o" / "metrics.json")
    assert (
        cli.main(
            [
                "evaluate",
                "--checkpoint",
                str(tmp_path / "o"),
                "--data-dir",
                str(mine),
                "--out",
                str(tmp_path / "ev"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "made with val_fraction 0.4 (recorded in" in out
    ev = json.loads((tmp_path / "ev" / "evaluation.json").read_text())
    assert ev["num_images"] == 4 and ev["accuracy"] == pytest.approx(h.test_acc[-1])
