"""Runs in separate processes: two-process DDP, resuming after SIGKILL, saving on SIGTERM."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import efficientvim
from efficientvim.cli import main
from train_helpers import make_folder, write_config

SRC = str(Path(efficientvim.__file__).resolve().parents[1])


def env() -> dict[str, str]:
    # one thread per process: two processes on two cores must not oversubscribe them
    return {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1"}


def train_cmd(tmp_path: Path, data: Path, out: Path, epochs: int) -> list[str]:
    config = write_config(tmp_path / "tiny.yaml", epochs=epochs)
    return ["-m", "efficientvim", "train", "--config", str(config), "--data", str(data), "--output", str(out)]


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.time() + timeout
    while not path.exists():
        if proc.poll() is not None:
            pytest.fail(f"training exited early: {proc.stdout.read()}")
        if time.time() > end:
            proc.kill()
            pytest.fail(f"{path} never appeared")
        time.sleep(0.02)


def start_two_epoch_run(tmp_path: Path) -> tuple[list[str], Path, subprocess.Popen]:
    """Start a 2-epoch run and return once epoch 1 is saved and epoch 2 (24 batches) is starting."""
    data = make_folder(tmp_path / "data", per_class={"train": 24, "val": 3})
    out = tmp_path / "out"
    cmd = [sys.executable, *train_cmd(tmp_path, data, out, epochs=2)]
    proc = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for(out / "last.pt", proc)
    return cmd, out, proc


def epochs_logged(out: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_two_process_ddp_run_reduces_metrics_and_writes_once(tmp_path, capsys):
    data = make_folder(tmp_path / "data")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           *train_cmd(tmp_path, data, out, epochs=2)]
    run = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "total batch 8 (2 x 4 x 1)" in run.stdout
    assert len(re.findall(r"best top-1 [\d.]+%", run.stdout)) == 1  # rank 1 prints nothing
    assert "Grad strides do not match" not in run.stderr
    assert epochs_logged(out) == [1, 2]
    # the accuracy reduced over both processes equals a one-process evaluation of the same weights
    with safe_open(str(out / "best.safetensors"), "pt") as f:
        reduced_top1 = json.loads(f.metadata()["top1"])
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out / "best.safetensors"), "--data", str(data), "--workers", "0"]) == 0
    single = float(re.search(r"top-1 ([\d.]+)%", capsys.readouterr().out).group(1))
    assert single == pytest.approx(reduced_top1, abs=0.01)


def test_rerun_after_sigkill_resumes_from_the_last_checkpoint(tmp_path):
    cmd, out, proc = start_two_epoch_run(tmp_path)
    proc.kill()  # SIGKILL: no handler runs, nothing is saved on the way out
    proc.wait(timeout=30)
    saved = torch.load(out / "last.pt", weights_only=True)["fit_state"]
    assert saved["epoch"] >= 1 and proc.returncode == -signal.SIGKILL
    rerun = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=240)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resumed from {out / 'last.pt'} at epoch {saved['epoch'] + 1}/2" in rerun.stdout
    assert f"epoch {saved['epoch']}/2" not in rerun.stdout.split("resumed from")[1]  # finished epochs not redone
    assert epochs_logged(out) == [1, 2]
    assert torch.load(out / "last.pt", weights_only=True)["fit_state"]["epoch"] == 2
    # the killed run's lock was left behind; its process is gone, so the rerun took it over, said so, and let go
    assert f"note: taking over {out / '.efficientvim.lock'}: its run (pid {proc.pid} on " in rerun.stdout
    assert not (out / ".efficientvim.lock").exists()


def test_a_second_run_into_the_same_folder_is_refused_while_the_first_goes_on(tmp_path):
    data = make_folder(tmp_path / "data", per_class={"train": 24, "val": 3})
    out = tmp_path / "out"
    cmd = [sys.executable, *train_cmd(tmp_path, data, out, epochs=50)]  # still running when the second starts
    first = subprocess.Popen(cmd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(out / "last.pt", first)
        second = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=240)
        assert first.poll() is None  # the first run was still going when the second was refused
    finally:
        first.send_signal(signal.SIGTERM)  # it saves and stops
        log = first.communicate(timeout=120)[0]
    assert second.returncode == 2 and second.stderr.count("\n") == 1 and second.stdout == ""
    assert second.stderr.startswith(f"efficientvim train: error: {out} is in use by another training (pid {first.pid} "
                                    "on ")
    assert first.returncode == 128 + signal.SIGTERM, log[-3000:]  # undisturbed by the second: it saved and ended
    assert not (out / ".efficientvim.lock").exists()


def test_a_torn_last_metrics_line_is_dropped_with_a_note_and_the_run_resumes(tmp_path):
    """A full disk cut the last append short: every later resume crashed on it (JSONDecodeError)."""
    cmd, out, proc = start_two_epoch_run(tmp_path)
    proc.kill()
    proc.wait(timeout=30)
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "train_loss": 0.4')  # no closing brace, no newline
    rerun = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=240)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert re.search(rf"note: {re.escape(str(out / 'metrics.jsonl'))} line \d+ is not a whole record", rerun.stderr)
    assert epochs_logged(out) == [1, 2]


def test_sigterm_saves_a_checkpoint_that_the_rerun_continues(tmp_path):
    cmd, out, proc = start_two_epoch_run(tmp_path)
    proc.send_signal(signal.SIGTERM)
    log = proc.communicate(timeout=60)[0]
    assert proc.returncode == 128 + signal.SIGTERM, log[-3000:]
    saved = torch.load(out / "last.pt", weights_only=True)["fit_state"]
    if saved["step"]:  # stopped inside an epoch: the position is the one reported
        assert f"SIGTERM: saved {out / 'last.pt'} at epoch {saved['epoch'] + 1}, batch {saved['step']}" in log
        resumed_at = f"at epoch {saved['epoch'] + 1}/2, batch {saved['step']}"
    else:
        assert f"SIGTERM: saved {out / 'last.pt'} after epoch {saved['epoch']}" in log
        resumed_at = f"at epoch {saved['epoch'] + 1}/2"
    rerun = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=240)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert resumed_at in rerun.stdout
    assert epochs_logged(out) == [1, 2]
    # 96 images in batches of 4: every batch trained exactly once across the interruption
    assert torch.load(out / "last.pt", weights_only=True)["fit_state"]["updates"] == 2 * 24
