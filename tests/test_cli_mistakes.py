"""The command line as a stranger meets it, in subprocesses: fast help, one-line errors with exit code 2
for every mistake (bad numbers, wrong or unwritable paths, hostile files), and checkpoint-only commands."""

from __future__ import annotations

import json
import os
import pickle
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import efficientvim
from efficientvim import runtimes
from efficientvim.cli import main
from efficientvim.cli.common import MIN_IMG_SIZE
from train_helpers import make_folder

SRC = str(Path(efficientvim.__file__).resolve().parents[1])
NARROW = dict(embed_dim=(32, 48, 64), depths=(1, 1, 1), state_dim=(8, 6, 4))


def cli(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", **(env or {})})


def heavy_imports(*args: str) -> set[str]:
    """Top-level packages among torch, timm, numpy and PIL that ``efficientvim ARGS`` imports."""
    run = cli("-X", "importtime", "-m", "efficientvim", *args)
    modules = {line.rsplit("|", 1)[-1].strip() for line in run.stderr.splitlines() if line.startswith("import time:")}
    return {m for m in modules if m.split(".")[0] in ("torch", "timm", "numpy", "PIL")}


@pytest.mark.parametrize("args", [("--help",), ("train", "--help"), ("train", "--lr", "-1"), ("bench", "--help"),
                                  ("export", "--img-size", "7", "--format", "onnx", "-o", "x.onnx")])
def test_help_and_argument_errors_import_no_torch(args):
    assert heavy_imports(*args) == set()


def test_version_is_printed():
    run = cli("-m", "efficientvim", "--version")
    assert run.returncode == 0 and run.stdout.strip() == f"efficientvim {efficientvim.__version__}"


def test_the_clis_own_constants_agree_with_the_package():
    from efficientvim import export
    from efficientvim.cli import export as export_cli
    from efficientvim.cli.train import DENSE_RECIPE_NAMES, DENSE_TASKS
    from efficientvim.dense import RECIPES
    from efficientvim.dense.data import TASKS

    assert efficientvim.create_model("efficientvim_m1", **NARROW).total_stride == MIN_IMG_SIZE
    assert export_cli.MIN_OPSET == export.MIN_OPSET and DENSE_TASKS == TASKS
    assert {t: tuple(n for n, r in RECIPES.items() if r.task == t) for t in TASKS} == DENSE_RECIPE_NAMES


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("mistakes")
    model = efficientvim.create_model("efficientvim_m1", num_classes=4, **NARROW)
    efficientvim.save_weights(model, root / "narrow.safetensors", ["a", "b", "c", "d"])
    (root / "empty").mkdir()
    evil = root / "evil.pth"
    evil.write_bytes(pickle.dumps({"model": _Exploit(str(root / "pwned"))}))
    data = make_folder(root / "data")
    (data / "val" / "star" / "broken.png").write_bytes(b"not a png")
    return dict(root=root, ckpt=root / "narrow.safetensors", empty=root / "empty", evil=evil, data=data,
                image=next((data / "val" / "tri").iterdir()))


class _Exploit:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def unwritable(tmp_path_factory) -> Path:
    """A folder no file can be created in: read-only for a normal user; /sys for root, whom permissions
    do not stop."""
    if os.geteuid() != 0:
        folder = tmp_path_factory.mktemp("readonly")
        folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
        return folder
    if not Path("/sys").is_dir():
        pytest.skip("needs a folder root cannot write")
    return Path("/sys")


MISTAKES = [
    (["train", "--lr", "-1"], "argument --lr: must be 0 or more, got -1"),
    (["train", "--img-size", "7"], "argument --img-size: must be at least 64"),
    (["train", "--epochs", "0"], "argument --epochs: must be at least 1, got 0"),
    (["train", "--drop-path", "1.5"], "argument --drop-path: must be between 0 and 1"),
    (["train", "--batch-size", "ten"], "argument --batch-size: expected an integer, got 'ten'"),
    (["eval", "--checkpoint", "{ckpt}", "--batch-size", "-3"], "argument --batch-size: must be at least 1, got -3"),
    (["eval", "--checkpoint", "{ckpt}", "--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
    (["eval", "--checkpoint", "{ckpt}", "--workers", "-1"], "argument --workers: must be 0 or more, got -1"),
    (["eval", "--checkpoint", "{ckpt}", "--data", "{empty}"], "no images found under"),
    (["export", "efficientvim_m1", "--img-size", "7", "--format", "onnx", "-o", "{root}/x.onnx"],
     "argument --img-size: must be at least 64"),
    (["export", "efficientvim_m1", "--format", "onnx", "-o", "{unwritable}/x.onnx"],
     "cannot write {unwritable}/x.onnx"),
    (["export", "efficientvim_m1", "--format", "torchscript", "-o", "{unwritable}/x.pt"], "cannot write"),
    (["visualize", "{image}", "--checkpoint", "{ckpt}", "-o", "{unwritable}/x.png"], "cannot write"),
    (["train", "--data", "{data}", "--output", "{unwritable}/run"], "cannot write into {unwritable}/run"),
    (["bench", "--models", "efficientvim_m1", "-o", "{unwritable}/b"], "cannot write into {unwritable}/b"),
    (["models", "zzz"], "no models match 'zzz'"),
    (["info", "--checkpoint", "{evil}"], "was refused: it contains code that would run when loaded"),
    (["info", "--checkpoint", "{empty}"], "is a folder: pass the weights file inside it"),
    (["export", "efficientvim_m2", "--checkpoint", "{ckpt}", "--format", "onnx", "-o", "{root}/y.onnx"],
     "holds efficientvim_m1, not efficientvim_m2"),
    (["eval", "--checkpoint", "{ckpt}", "--data", "{data}", "--workers", "1", "--strict-data"],
     "unreadable image: {data}/val/star/broken.png is not a JPEG, PNG, WebP, TIFF, BMP, GIF or PPM image"),
]


@pytest.mark.parametrize("args, message", MISTAKES, ids=[" ".join(a[:3]) for a, _ in MISTAKES])
def test_a_mistake_is_one_line_on_stderr_with_exit_code_2(args, message, files, unwritable):
    fill = {k: str(v) for k, v in files.items()} | {"unwritable": str(unwritable)}
    run = cli("-m", "efficientvim", *[a.format(**fill) for a in args])
    lines = [line for line in re.split(r"[\r\n]+", run.stderr) if line.strip()]
    assert run.returncode == 2, run.stderr[-2000:]
    assert len(lines) == 1 and message.format(**fill) in lines[0], run.stderr[-2000:]
    assert "Traceback" not in run.stderr and not (files["root"] / "pwned").exists()


def test_a_bad_number_stops_train_before_it_writes_anything(tmp_path):
    assert main(["train", "--img-size", "7", "--output", str(tmp_path / "run")]) == 2
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("command", [
    ["info", "--checkpoint", "{ckpt}"],
    ["predict", "{image}", "--checkpoint", "{ckpt}", "--topk", "1"],
    ["visualize", "{image}", "--checkpoint", "{ckpt}", "-o", "{out}/v.png"],
    ["export", "--checkpoint", "{ckpt}", "--format", "onnx", "-o", "{out}/m.onnx"],
    ["export", "efficientvim_m1", "--checkpoint", "{ckpt}", "--format", "torchscript", "-o", "{out}/m.pt"],
    ["eval", "--checkpoint", "{ckpt}", "--data", "{data}", "--workers", "0"],
])
def test_our_own_weights_work_with_every_command_by_themselves(command, files, tmp_path, capsys):
    """A narrowed M1 (widths 32/48/64) written by save_weights: the file alone rebuilds it everywhere."""
    fill = {k: str(v) for k, v in files.items()} | {"out": str(tmp_path)}
    assert main([a.format(**fill) for a in command]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    if command[0] == "info":
        params = sum(p.numel() for p in efficientvim.load_model(files["ckpt"]).parameters())
        assert f"parameters      {params:,}" in out
    if command[0] == "predict":
        assert re.search(r"^\s+1\s+[\d.]+%\s+[abcd]$", out, re.M)


def test_the_mismatch_message_names_the_real_difference(files):
    with pytest.raises(efficientvim.CheckpointError, match=r"holds efficientvim_m1 with embed_dim \(32, 48, 64\), "
                       r"not \(64, 96, 160\): drop the embed_dim override"):
        efficientvim.create_model("efficientvim_m1", checkpoint=files["ckpt"], embed_dim=(64, 96, 160))


def test_weights_files_are_written_with_the_users_umask(tmp_path):
    old = os.umask(0o022)
    try:
        model = efficientvim.create_model("efficientvim_m1", **NARROW)
        path = efficientvim.save_weights(model, tmp_path / "w.safetensors")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_a_rerun_with_other_settings_is_refused_and_names_the_change(tmp_path, capsys):
    data = make_folder(tmp_path / "data")
    common = ["train", "--data", str(data), "--output", str(tmp_path / "run"), "--img-size", "64", "--batch-size",
              "4", "--workers", "0", "--model-arg", "embed_dim=32,48,64", "--model-arg", "depths=1,1,1"]
    torch.set_num_threads(1)
    assert main([*common, "--epochs", "1"]) == 0
    capsys.readouterr()
    assert main([*common, "--epochs", "2", "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert "holds a run with other settings (epochs 1 -> 2): pass --resume" in err
    assert main([*common, "--epochs", "1"]) == 0  # the same settings: resumes (here: already done)
    assert "resumed from" in capsys.readouterr().out
    assert main([*common, "--epochs", "2", "--resume"]) == 0
    out = capsys.readouterr().out
    assert "with changed settings: epochs 1 -> 2" in out and "epoch 2/2" in out


def test_info_on_a_weights_tag_needs_no_download(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["info", "efficientvim_m2.e450_in1k"]) == 0
    assert "parameters      13,903,842" in capsys.readouterr().out


def test_train_makes_openmp_wait_passively_before_torch_loads_it():
    code = ("import os, sys; from efficientvim.cli import main; main(['train', '--print-config']); "
            "print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**env, "PYTHONPATH": SRC})
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == "PASSIVE False"


def test_predict_on_a_folder_names_the_files_it_did_not_read(files, tmp_path, capsys):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "photo.png").write_bytes(files["image"].read_bytes())
    (folder / "notes.txt").write_text("not an image")
    (folder / "IMG_0001.heic").write_bytes(b"\x00\x00\x00\x18ftypheic")  # a format this Pillow does not open
    assert main(["predict", str(folder), "--checkpoint", str(files["ckpt"]), "--topk", "1", "--json"]) == 0
    captured = capsys.readouterr()
    assert [r["image"] for r in json.loads(captured.out)] == [str(folder / "photo.png")]
    note, *rest = captured.err.splitlines()
    assert note == (f"note: skipped 2 files that are not images of the formats read: "
                    f"{folder / 'IMG_0001.heic'}, {folder / 'notes.txt'}")
    assert rest == [f"runtime: {runtimes.auto_runtime('fp32')[0]} fp32 ({runtimes.auto_runtime('fp32')[1]}; "
                    "--runtime chooses another)"]  # the runtime --runtime auto chose, once the inputs are read


@pytest.mark.parametrize("module", ["onnx", "onnxruntime"])
def test_a_missing_onnx_extra_is_one_line_naming_it(module, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, module, None)  # what an environment without it raises on import
    assert main(["export", "efficientvim_m1", "--format", "onnx", "-o", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith(f"needs {module}, which is not installed: pip install 'efficientvim[onnx]'")
    assert len(err.splitlines()) == 1


def test_a_missing_demo_extra_is_one_line_naming_it_before_any_model_is_built(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)
    monkeypatch.chdir(tmp_path)
    assert main(["demo", "--model", "no_such_model"]) == 2  # the extra is named first, not the unknown model
    err = capsys.readouterr().err.strip()
    assert err == ("efficientvim demo: error: efficientvim demo needs gradio, which is not installed: "
                   "pip install 'efficientvim[demo]'")
    assert list(tmp_path.iterdir()) == []


def test_training_without_tensorboard_says_so_and_keeps_its_other_logs(tmp_path, monkeypatch, capsys):
    from efficientvim.train.metrics import MetricsLog

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    log = MetricsLog(tmp_path, enabled=True, keep_epochs=0)
    log.log({"epoch": 1, "train_loss": 1.0, "top1": 50.0})
    log.close()
    assert "pip install 'efficientvim[tensorboard]'" in capsys.readouterr().err
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 1 and (tmp_path / "curves.png").is_file()
    assert not (tmp_path / "tensorboard").exists()
