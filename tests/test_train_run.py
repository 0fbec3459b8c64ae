"""End-to-end training and evaluation runs on tiny folders, in this process (seconds each)."""

from __future__ import annotations

import hashlib
import json
import os
import re

import pytest
import torch
from safetensors import safe_open

import efficientvim
from efficientvim.cli import main
from train_helpers import make_folder, write_config


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from a second thread, and a busy machine makes two threads crawl."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train(tmp_path, *args: str, config_changes: dict | None = None) -> int:
    config = write_config(tmp_path / "tiny.yaml", **(config_changes or {}))
    return main(["train", "--config", str(config), *args])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One 2-epoch run on a 4-class folder, shared by the output tests."""
    root = tmp_path_factory.mktemp("run")
    data = make_folder(root / "data")
    out = root / "out"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = train(root, "--data", str(data), "--output", str(out))
    return dict(code=code, out=out, data=data, log=buf.getvalue())


def test_run_ends_with_a_top1_summary_line(trained):
    assert trained["code"] == 0
    last_line = trained["log"].strip().splitlines()[-1]
    assert re.search(r"top-1 \d+\.\d\d%", last_line), last_line


def test_outputs_are_written(trained):
    out = trained["out"]
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert {"train_loss", "top1", "top5", "val_loss", "ema_top1", "lr"} <= set(records[0])
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert any((out / "tensorboard").glob("events.out.tfevents.*"))
    assert not list(out.glob("*.tmp"))


def test_last_checkpoint_is_plain_data_with_ema_and_optimizer(trained):
    state = torch.load(trained["out"] / "last.pt", weights_only=True)
    assert state["fit_state"]["epoch"] == 2 and state["fit_state"]["step"] == 0
    assert {"model", "model_ema", "optimizer", "metadata"} <= set(state)
    assert state["metadata"]["class_names"] == ["circle", "square", "star", "tri"]
    assert not torch.equal(state["model"]["heads.0.weight"], state["model_ema"]["heads.0.weight"])


def test_best_weights_load_with_class_names_and_score_what_eval_reports(trained, capsys):
    out = trained["out"]
    best = out / "best.safetensors"
    model = efficientvim.load_model(best)
    assert model.pretrained_cfg["label_names"] == ["circle", "square", "star", "tri"]
    assert model.pretrained_cfg["input_size"] == (3, 64, 64)
    with safe_open(str(best), "pt") as f:
        saved_top1 = json.loads(f.metadata()["top1"])
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert saved_top1 == pytest.approx(max(max(r["top1"], r["ema_top1"]) for r in records), abs=1e-3)
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(best), "--data", str(trained["data"]), "--workers", "0"]) == 0
    line = capsys.readouterr().out
    top1 = float(re.search(r"top-1 ([\d.]+)%", line).group(1))
    assert top1 == pytest.approx(saved_top1, abs=0.01)
    assert re.search(r"top-5 [\d.]+%  loss [\d.]+", line)


def test_eval_reads_the_training_checkpoint_too(trained, capsys):
    assert main(["eval", "--checkpoint", str(trained["out"] / "last.pt"), "--data", str(trained["data"]),
                 "--workers", "0"]) == 0
    assert "on 12 images: top-1" in capsys.readouterr().out


def test_rerun_of_a_finished_run_resumes_at_the_end(trained, capsys):
    code = train(trained["out"].parent, "--data", str(trained["data"]), "--output", str(trained["out"]))
    out = capsys.readouterr().out
    assert code == 0
    assert "resumed from" in out and "the end (2 epochs done)" in out
    assert len((trained["out"] / "metrics.jsonl").read_text().splitlines()) == 2


def test_a_rerun_writes_the_final_weights_a_failed_save_left_out(trained, tmp_path, capsys):
    """The last save of a finished run failed (a full disk): the rerun writes it instead of saying "done" without it."""
    import shutil

    out = tmp_path / "out"
    shutil.copytree(trained["out"], out)
    with safe_open(str(out / "last.safetensors"), "pt") as f:
        before = json.loads(f.metadata()["top1"])
    (out / "last.safetensors").unlink()
    capsys.readouterr()
    assert train(tmp_path, "--data", str(trained["data"]), "--output", str(out)) == 0
    printed = capsys.readouterr().out
    assert f"note: {out / 'last.safetensors'} was missing (its save failed?): written now" in printed
    with safe_open(str(out / "last.safetensors"), "pt") as f:
        meta = f.metadata()
    assert json.loads(meta["epoch"]) == 2 and json.loads(meta["top1"]) == pytest.approx(before, abs=1e-6)
    capsys.readouterr()
    assert train(tmp_path, "--data", str(trained["data"]), "--output", str(out)) == 0  # present now: left alone
    assert "was missing" not in capsys.readouterr().out


def test_empty_and_cut_off_images_are_listed_before_training_and_corrupt_ones_noted_in_one_line(tmp_path):
    """As a user runs it (a subprocess): empty and truncated files are found by the scan and listed with the other
    skipped files, not counted in the class totals; an image that only fails when decoded is named in one line on
    stderr, never as a Python warning printed into the progress bar."""
    import subprocess
    import sys

    data = make_folder(tmp_path / "data")
    star = data / "train" / "star"
    (star / "empty.jpg").write_bytes(b"")
    whole = (star / "0.png").read_bytes()
    (star / "cut.png").write_bytes(whole[: len(whole) // 2])
    (star / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image, yet it ends as one IEND\xaeB`\x82")
    config = write_config(tmp_path / "tiny.yaml")
    done = subprocess.run([sys.executable, "-m", "efficientvim", "train", "--config", str(config), "--data",
                           str(data), "--output", str(tmp_path / "out"), "--epochs", "1", "--workers", "0"],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    listed = next(line for line in done.stdout.splitlines() if "train: skipped" in line)
    assert "skipped 2 files" in listed and "star/empty.jpg (empty (0 bytes))" in listed
    assert re.search(r"star/cut\.png \(a truncated PNG \(\d+ bytes, no end marker\)\)", listed)
    assert "star 7," in done.stdout  # 6 images and broken.png, which only decoding shows to be broken
    notes = [line for line in done.stderr.splitlines() if "broken.png" in line]
    assert len(notes) == 1 and re.fullmatch(r"note: skipped unreadable image: .*broken\.png is a truncated PNG file .*",
                                           notes[0].split("\r")[-1])
    assert "Warning" not in done.stderr and (tmp_path / "out" / "best.safetensors").exists()


def test_a_missing_data_folder_is_said_before_an_earlier_run_is_compared(trained, tmp_path):
    """The output folder holds a run on other data: a --data folder that does not exist is the error, not the
    difference between the runs (it was "holds a run with other settings (data ... -> ...)")."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "efficientvim", "train", "--data", str(tmp_path / "my_photos"),
                           "--output", str(trained["out"])], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [f"efficientvim train: error: dataset folder {tmp_path / 'my_photos'} not "
                                        "found: pass --data a folder with train/<class>/... and val/<class>/... (or "
                                        "leave --data out to train on the bundled digits)"]


def test_corrupt_image_is_fatal_with_strict_data(tmp_path, capsys):
    data = make_folder(tmp_path / "data")
    (data / "train" / "star" / "broken.png").write_bytes(b"truncated")
    code = train(tmp_path, "--data", str(data), "--output", str(tmp_path / "out"), "--epochs", "1", "--strict-data")
    err = capsys.readouterr().err
    assert code == 2
    assert re.search(r"efficientvim train: error: unreadable image: .*broken\.png", err)
    assert "Traceback" not in err


def test_mismatched_class_folders_stop_before_training(tmp_path, capsys):
    data = make_folder(tmp_path / "data", classes=("circle", "square", "star"))
    (data / "val" / "star").rename(data / "val" / "stars")
    code = train(tmp_path, "--data", str(data), "--output", str(tmp_path / "out"))
    err = capsys.readouterr().err
    assert code == 2
    assert "only in train/: star; only in val/: stars" in err
    assert not (tmp_path / "out").exists()


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(tmp_path, capsys):
    data = make_folder(tmp_path / "data")
    out = tmp_path / "out"
    assert train(tmp_path, "--data", str(data), "--output", str(out), config_changes={"epochs": 1}) == 0
    before = hashlib.sha256((out / "last.pt").read_bytes()).hexdigest()
    capsys.readouterr()
    # an absurd learning rate blows the weights up within a couple of updates
    code = train(tmp_path, "--data", str(data), "--output", str(out), "--lr", "1e30", "--resume",
                 config_changes={"epochs": 2})
    err = capsys.readouterr().err
    assert code == 2
    assert re.search(r"loss became (nan|inf) at epoch 2, batch \d+: stopped without saving", err)
    assert "last.pt (after epoch 1) is the last good checkpoint" in err
    assert hashlib.sha256((out / "last.pt").read_bytes()).hexdigest() == before


def test_finetune_with_other_classes_and_resolution_resets_the_heads(tmp_path, trained, capsys):
    data = make_folder(tmp_path / "data3", classes=("circle", "square", "tri"))
    out = tmp_path / "ft"
    source = trained["out"] / "best.safetensors"
    code = train(tmp_path, "--data", str(data), "--output", str(out), "--checkpoint", str(source),
                 "--img-size", "96", config_changes={"epochs": 1, "model_args": {}})
    log = capsys.readouterr().out
    assert code == 0
    assert "MSF heads reset for 3 classes" in log
    model = efficientvim.load_model(out / "best.safetensors")
    assert model.num_classes == 3 and model.pretrained_cfg["input_size"] == (3, 96, 96)
    assert model.pretrained_cfg["label_names"] == ["circle", "square", "tri"]


def test_distillation_without_teacher_weights_is_refused(tmp_path, capsys):
    data = make_folder(tmp_path / "data")
    code = train(tmp_path, "--data", str(data), "--output", str(tmp_path / "out"), "--distillation", "hard")
    assert code == 2
    assert "--teacher-checkpoint" in capsys.readouterr().err


def test_accumulation_steps_the_optimizer_once_per_window(tmp_path):
    data = make_folder(tmp_path / "data")  # 24 images, batch 4: 6 micro-batches per epoch
    out = tmp_path / "out"
    assert train(tmp_path, "--data", str(data), "--output", str(out), "--accum-steps", "2", "--epochs", "1") == 0
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["fit_state"]["updates"] == 3
    assert state["optimizer"]["state"][0]["step"].item() == 3


def test_eval_takes_an_authors_style_checkpoint_with_a_model_name(tmp_path, capsys):
    data = make_folder(tmp_path / "data")
    model = efficientvim.create_model("efficientvim_m1", num_classes=4)
    path = tmp_path / "EfficientViM_M1_custom.pth"
    torch.save({"model": model.state_dict(), "epoch": 3}, path)
    assert main(["eval", "--checkpoint", str(path), "--data", str(data), "--workers", "0"]) == 2
    assert "pass --model NAME" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(path), "--model", "efficientvim_m1", "--data", str(data),
                 "--img-size", "64", "--workers", "0"]) == 0
    assert re.search(r"efficientvim_m1 at 64px on 12 images: top-1 [\d.]+%  top-5 100.00%", capsys.readouterr().out)


def test_resuming_into_a_run_of_another_model_is_refused(tmp_path, trained, capsys):
    args = ["--data", str(trained["data"]), "--output", str(trained["out"])]
    other = {"model_args": {"embed_dim": [32, 48, 96]}}
    assert train(trained["out"].parent, *args, config_changes=other) == 2
    assert "holds a run with other settings (model_args {" in capsys.readouterr().err
    # even when told to resume with changed settings, weights of another shape cannot be loaded
    assert train(trained["out"].parent, *args, "--resume", config_changes=other) == 2
    err = capsys.readouterr().err
    assert f"cannot resume from {trained['out'] / 'last.pt'}: it belongs to a different model" in err


def test_evaluate_counts_top1_top5_and_mean_loss_over_batches():
    from torch.nn import functional as F

    from efficientvim.train.distributed import Distributed
    from efficientvim.train.evaluation import evaluate

    # 6 classes; class 0 ranks first, class 5 last: target 0 is a top-1 hit, 3 a top-5 hit, 5 a miss
    logits = torch.tensor([[6.0, 5, 4, 3, 2, 1]]).repeat(3, 1)
    y = torch.tensor([0, 3, 5])
    batches = [(logits[:2], y[:2]), (logits[2:], y[2:])]
    metrics = evaluate(torch.nn.Identity(), batches, Distributed())
    assert metrics["images"] == 3
    assert metrics["top1"] == pytest.approx(100 / 3)
    assert metrics["top5"] == pytest.approx(200 / 3)
    assert metrics["loss"] == pytest.approx(F.cross_entropy(logits, y).item())


def test_training_curves_colour_by_source_tick_whole_epochs_and_leave_out_what_says_nothing(tmp_path):
    from efficientvim.train.metrics import plot_curves

    records = [{"epoch": e, "train_loss": 2.0 / e, "train_top1": 30.0 * e, "top1": 31.0 * e, "top5": 100.0,
                "val_loss": 1.9 / e, "ema_top1": 29.0 * e, "ema_top5": 100.0, "ema_val_loss": 2.1 / e, "lr": 1e-3,
                "img_per_s": 250.0, "time_s": 6.0} for e in (1, 2, 3)]
    drawn = plot_curves(records, tmp_path / "curves.png", hidden=("top5", "ema_top5"))  # a 5-class run
    lines = drawn["lines"]
    assert (tmp_path / "curves.png").stat().st_size > 0
    assert set(lines) == {"train_loss", "train_top1", "top1", "val_loss", "ema_top1", "ema_val_loss"}
    assert lines["train_loss"]["color"] == lines["train_top1"]["color"]  # one colour per source, in both panels
    assert lines["val_loss"]["color"] == lines["top1"]["color"]
    assert lines["ema_val_loss"]["color"] == lines["ema_top1"]["color"]
    assert len({lines[k]["color"] for k in ("train_top1", "top1", "ema_top1")}) == 3
    assert {k for k, v in lines.items() if v["panel"] == "loss"} == {"train_loss", "val_loss", "ema_val_loss"}
    assert drawn["ticks"] == [1.0, 2.0, 3.0]  # whole epochs, no 1.5
    shown = plot_curves(records, tmp_path / "curves.png")["lines"]  # more classes: top-5 drawn, its own style
    assert shown["top5"]["style"] != shown["top1"]["style"] and shown["top5"]["color"] == shown["top1"]["color"]
