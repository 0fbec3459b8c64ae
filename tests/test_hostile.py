"""What a careless or hostile world hands the toolkit: full disks, signals, planted links, files whose metadata lies,
tiny files that decode huge, stray environment variables. Each promise is shown by value: the earlier file's bytes
unchanged, nothing half-written left, the one line said, the memory a child may use capped."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import torch

import efficientvim as ev
from efficientvim.errors import CheckpointError, DiskFullError, EfficientViMError
from efficientvim.writing import append_line, replacing, staging, write_bytes

SRC = Path(__file__).resolve().parents[1] / "src"
TINY = dict(embed_dim=(16, 32, 48), depths=(1, 1, 1), state_dim=(4, 4, 4))


def cli(*args: str, env: dict | None = None, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "2", **(env or {})}
    return subprocess.run([sys.executable, "-m", "efficientvim", *args], capture_output=True, text=True,
                          env=environ, timeout=timeout, **kw)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The failed command's message: exit code 2, one line on stderr (notes aside), no traceback."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, result.stderr
    return lines[0]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp"))


@contextlib.contextmanager
def small_disk(tmp_path: Path, size: str):
    """A tmpfs of ``size`` mounted in ``tmp_path`` (root only: CI runs as root; skipped with the reason elsewhere)."""
    if os.geteuid() != 0:
        pytest.skip("a full disk is shown on a tmpfs, which only root may mount (CI runs as root)")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"mounting a tmpfs is not permitted here: {mounted.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path, leave: int) -> None:
    """Write a file that leaves ``leave`` bytes free on ``disk``."""
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    with open(disk / "filler", "wb") as f:
        f.write(b"\0" * max(0, free - leave))


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny") / "tiny.safetensors"
    torch.manual_seed(0)
    ev.save_weights(ev.create_model("efficientvim_m1", num_classes=3, **TINY), path, class_names=["a", "b", "c"])
    return path


# 1. nothing a user had is lost; nothing half-written looks valid


def test_a_failed_check_keeps_the_earlier_file_and_leaves_nothing(tmp_path):
    target = tmp_path / "model.bin"
    target.write_bytes(b"earlier good file")

    def refuse(path: Path) -> None:
        assert path.read_bytes() == b"new", "the check sees the whole new file"
        raise EfficientViMError("the new file does not check")

    with pytest.raises(EfficientViMError, match="does not check"):
        write_bytes(target, b"new", check=refuse)
    with pytest.raises(KeyboardInterrupt), replacing(target) as f:
        f.write(b"half")
        raise KeyboardInterrupt  # a signal mid-write
    assert target.read_bytes() == b"earlier good file"
    assert leftovers(tmp_path) == []
    write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_planted_links_are_replaced_never_followed(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / "last.pt").symlink_to(outside)
    (out / "last.pt.tmp").symlink_to(outside)  # the name the old writer used
    write_bytes(out / "last.pt", b"checkpoint")
    assert outside.read_text() == "precious"
    assert not (out / "last.pt").is_symlink() and (out / "last.pt").read_bytes() == b"checkpoint"
    (out / "metrics.jsonl").symlink_to(tmp_path / "nowhere.jsonl")
    with pytest.raises(EfficientViMError, match="metrics.jsonl is a link"):
        append_line(out / "metrics.jsonl", "{}")
    assert not (tmp_path / "nowhere.jsonl").exists()


def test_staging_replaces_files_and_folders_together_or_not_at_all(tmp_path):
    (tmp_path / "m.mlpackage").mkdir()
    (tmp_path / "m.mlpackage" / "old").write_text("old package")
    (tmp_path / "m.xml").write_text("old xml")
    with pytest.raises(RuntimeError), staging(tmp_path) as new:
        (new / "m.xml").write_text("new xml")
        raise RuntimeError("the .bin failed")
    assert (tmp_path / "m.xml").read_text() == "old xml" and leftovers(tmp_path) == []
    with staging(tmp_path) as new:
        (new / "m.mlpackage").mkdir()
        (new / "m.mlpackage" / "new").write_text("new package")
        (new / "m.xml").write_text("new xml")
        (new / "m.bin").write_bytes(b"weights")
    assert [p.name for p in (tmp_path / "m.mlpackage").iterdir()] == ["new"]
    assert (tmp_path / "m.xml").read_text() == "new xml" and (tmp_path / "m.bin").read_bytes() == b"weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.bin", "m.mlpackage", "m.xml"]


def test_a_full_disk_is_one_error_naming_the_file_and_the_space(tmp_path):
    with small_disk(tmp_path, "1m") as disk:
        (disk / "w.bin").write_bytes(b"earlier")
        with pytest.raises(DiskFullError) as known:  # the size is known: refused before a byte is written
            write_bytes(disk / "w.bin", b"\1" * 2_000_000)
        assert "w.bin was not written: the disk is full" in str(known.value)
        assert "the file needs 2 MB" in str(known.value) and "free in" in str(known.value)
        with pytest.raises(DiskFullError, match=r"needs more than the 1\.0\d MB written"), \
                replacing(disk / "w.bin") as f:  # streamed: the disk fills mid-write
            for _ in range(20):
                f.write(b"\1" * 100_000)
        assert (disk / "w.bin").read_bytes() == b"earlier"
        assert leftovers(disk) == []


def test_an_export_onto_a_full_disk_keeps_the_earlier_file(tmp_path, tiny_checkpoint):
    # torch's own TorchScript writer aborted the process on a full disk; OpenVINO's says "iostream error"
    formats = (("onnx", "m.onnx"), ("torchscript", "m.pt"), ("openvino", "m.xml"))
    with small_disk(tmp_path, "8m") as disk:
        for fmt, name in formats:
            assert cli("export", "--checkpoint", str(tiny_checkpoint), "--format", fmt, "--output",
                       str(disk / name)).returncode == 0
        earlier = {n: (disk / n).read_bytes() for n in ("m.onnx", "m.pt", "m.xml", "m.bin")}
        fill(disk, 100_000)
        for fmt, name in formats:
            line = one_line_error(cli("export", "--checkpoint", str(tiny_checkpoint), "--format", fmt, "--output",
                                      str(disk / name)))
            assert f"{disk / name} was not written: the disk is full" in line
        assert {n: (disk / n).read_bytes() for n in earlier} == earlier
        assert leftovers(disk) == []


def test_sigterm_during_an_export_leaves_the_earlier_file(tmp_path, tiny_checkpoint):
    out = tmp_path / "out"
    out.mkdir()
    (out / "m.onnx").write_bytes(b"earlier good file")
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.Popen([sys.executable, "-m", "efficientvim", "export", "--checkpoint", str(tiny_checkpoint),
                             "--format", "onnx", "--output", str(out / "m.onnx")], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not leftovers(out) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)  # the private folder exists from the moment the export starts writing
    assert leftovers(out), "the export never started writing"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "terminated" in err and "Traceback" not in err
    assert (out / "m.onnx").read_bytes() == b"earlier good file"
    assert leftovers(out) == []


def test_a_signal_during_an_import_is_delivered_once_the_import_has_finished(tmp_path):
    # a native module's initialisation that calls back into Python aborts the process on an exception (onnx's
    # did, under CI); the CLI's handler waits for the import and delivers the signal after it
    (tmp_path / "slow_module.py").write_text(
        "import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\nsum(range(3_000_000))\nFINISHED = True\n")
    code = ("import signal, sys, time\nfrom efficientvim.cli import Terminated, _interrupt\n"
            "signal.signal(signal.SIGTERM, _interrupt)\n"
            "try:\n    import slow_module\n    time.sleep(10)\n"
            "except Terminated:\n    print('imported' if getattr(sys.modules.get('slow_module'), 'FINISHED', False)"
            " else 'cut short')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(tmp_path)])}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "imported", proc.stderr


# 2. runs resume, and never mix (the lock, torn lines and SIGKILL: tests/test_train_processes.py)


def test_a_training_whose_disk_fills_says_so_and_the_rerun_writes_what_was_missing(tmp_path):
    with small_disk(tmp_path, "30m") as disk:
        args = ("train", "--epochs", "1", "--output", str(disk / "run"))
        line = one_line_error(cli(*args))
        assert "was not written: the disk is full" in line and "run/" in line
        assert leftovers(disk / "run") == [] and not (disk / "run" / ".efficientvim.lock").exists()
        subprocess.run(["mount", "-o", "remount,size=80m", "tmpfs", str(disk)], check=True)
        rerun = cli(*args)
        assert rerun.returncode == 0, rerun.stderr
        assert "was missing (its save failed?): written now" in rerun.stdout + rerun.stderr
        assert ev.load_model(disk / "run" / "last.safetensors").num_classes == 10


def test_tensorboard_on_a_full_disk_is_one_error_without_a_thread_traceback(tmp_path, capfd):
    pytest.importorskip("tensorboard")
    from efficientvim.train.metrics import MetricsLog

    with small_disk(tmp_path, "256k") as disk:
        log = MetricsLog(disk, enabled=True, keep_epochs=0)
        fill(disk, 0)
        with pytest.raises(DiskFullError, match="tensorboard"):
            for epoch in range(1, 2000):
                log.log({"epoch": epoch, "train_loss": 1.0 / epoch, "top1": 50.0})
        log.close()
    assert "Traceback" not in capfd.readouterr().err


# 3. small hostile inputs cannot exhaust memory or hang


def _png(path: Path, width: int, height: int, bit_depth: int = 8, rows: int | None = None) -> Path:
    """A grey PNG of zeros written row by row (a tiny file that decodes huge), without holding its pixels;
    ``rows``: how many rows its data holds (fewer than ``height``: only its header is whole)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" * (1 + width * bit_depth // 8)
    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(row) for _ in range(height if rows is None else rows)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, bit_depth, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def test_images_that_decode_huge_are_refused_or_reduced_within_a_memory_cap(tmp_path):
    from PIL import Image

    files = {
        "strip": _png(tmp_path / "strip.png", 4_000_000, 1),  # 25 KB, once 7 GB and 65 s
        "deep": _png(tmp_path / "deep.png", 8000, 8000, 16),  # 64 MP of 16 bits
        "eps": tmp_path / "photo.jpg",  # PostScript under a photo's name: Pillow's EPS reader runs Ghostscript
    }
    files["eps"].write_text("%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    Image.new("RGB", (12000, 9000), (200, 30, 30)).save(tmp_path / "large.jpg", quality=70)  # 108 MP
    child = """
import resource, sys, json
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
from efficientvim.images import read_image
from efficientvim.errors import ImageFileError
out = {}
for name, path in json.loads(sys.argv[1]).items():
    try:
        im = read_image(path)
        out[name] = [im.size, im.getpixel((10, 10))]
    except ImageFileError as e:
        out[name] = str(e)
print(json.dumps(out))
"""
    # a 30000 x 30000 PNG header and one row of data: Pillow's own limit refuses it when it opens the file
    files["bomb"] = _png(tmp_path / "bomb.png", 30000, 30000, rows=1)
    paths = {k: str(v) for k, v in files.items()} | {"large": str(tmp_path / "large.jpg")}
    result = subprocess.run([sys.executable, "-c", child, json.dumps(paths)], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(SRC)}, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "DecompressionBomb" not in result.stderr
    out = json.loads(result.stdout)
    assert out["strip"] == (f"{files['strip']} is 4000000x1 pixels, one side more than 100 times the other: no model "
                            "input (resizing its shorter side would make it huge); crop it into tiles first")
    assert out["deep"].startswith(f"{files['deep']} is 8000x8000 pixels (64 MP), more than the 50 MP decoded")
    assert out["eps"] == (f"{files['eps']} is not a JPEG, PNG, WebP, TIFF, BMP, GIF or PPM image (the formats read, "
                          "told by the contents, not the name)")
    assert out["bomb"] == (f"{files['bomb']} is too large to decode (Image size (900000000 pixels) exceeds limit "
                           "of 178956970 pixels): resize it first")
    assert out["large"][0] == [6000, 4500]  # decoded at half scale by the JPEG decoder
    assert all(abs(a - b) <= 3 for a, b in zip(out["large"][1], (200, 30, 30), strict=True))


def _hostile_variant(path: Path, source: Path, **header: str) -> Path:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(source), "pt") as f:
        meta = {**f.metadata(), **header}
    save_file(load_file(str(source)), str(path), metadata=meta)
    return path


@pytest.mark.parametrize(("header", "message"), [
    ({"embed_dim": "[100000, 32, 48]"}, "records embed_dim = [100000, 32, 48], which should be a list of 1 to 8 "
                                        "stage widths from 8 to 4096"),
    ({"embed_dim": "[4096, 4096, 4096]"}, "does not fit this model: shape mismatch"),  # in range, not the tensors
    ({"class_names": "a, b, c"}, "records class_names = 'a, b, c', which is not JSON"),
    ({"input_size": '"224"'}, "records input_size = '224', which should be [channels, height, width]"),
    ({"num_classes": "-3"}, "records num_classes = -3, which should be an integer from 0 to 100000"),
])
def test_weights_metadata_is_checked_before_anything_is_built(tmp_path, tiny_checkpoint, header, message):
    path = _hostile_variant(tmp_path / "hostile.safetensors", tiny_checkpoint, **header)
    with pytest.raises(CheckpointError) as refused:
        ev.load_model(path)
    assert message in str(refused.value)


def test_a_lying_checkpoint_is_one_line_within_a_memory_cap(tmp_path, tiny_checkpoint):
    path = _hostile_variant(tmp_path / "huge.safetensors", tiny_checkpoint, embed_dim="[4000, 4000, 4000]",
                            state_dim="[1000, 1000, 1000]")
    _png(tmp_path / "x.png", 64, 64)
    capped = f"import resource; resource.setrlimit(resource.RLIMIT_AS, (5 << 30, 5 << 30)); import runpy; " \
             f"import sys; sys.argv = ['efficientvim', 'predict', '{tmp_path / 'x.png'}', '--checkpoint', '{path}']; " \
             "runpy.run_module('efficientvim', run_name='__main__')"
    result = subprocess.run([sys.executable, "-c", capped], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(SRC)})
    assert "does not fit this model: shape mismatch" in one_line_error(result)


@pytest.mark.parametrize("dtype", [torch.bool, torch.int8])
def test_weights_that_cannot_be_the_models_are_refused(tmp_path, tiny_checkpoint, dtype):
    from safetensors.torch import load_file, save_file

    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in load_file(str(tiny_checkpoint)).items()}
    from safetensors import safe_open

    with safe_open(str(tiny_checkpoint), "pt") as f:
        save_file(state, str(tmp_path / "w.safetensors"), metadata=f.metadata())
    name = str(dtype).removeprefix("torch.")
    with pytest.raises(CheckpointError, match=rf"stores \d+ weights as integers or booleans \(.* is {name}\)"):
        ev.load_model(tmp_path / "w.safetensors")


@pytest.mark.parametrize(("model_args", "message"), [
    ({"embed_dim": [-32, 48, 64]}, "model_args records embed_dim = [-32, 48, 64], which should be a list"),
    ({"depths": "222"}, "model_args records depths = '222', which should be a list of 1 to 8 stage depths"),
    ({"embed_dims": [32, 48, 64]}, "records model_args 'embed_dims' that EfficientViM does not take"),
    ({"state_dim": [8, 6]}, "model_args records stage lists of different lengths"),
])
def test_a_hub_config_is_checked_before_anything_is_built(tmp_path, model_args, message):
    folder = ev.save_pretrained(ev.create_model("efficientvim_m1", num_classes=3, **TINY), tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    config["model_args"] = {**config["model_args"], **model_args}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError) as refused:
        ev.create_model(str(folder))
    assert message in str(refused.value)


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path):
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [{','.join([f'*{prev}'] * 9)}]")
    (tmp_path / "bomb.yaml").write_text("\n".join(lines) + "\n")
    start = time.monotonic()
    line = one_line_error(cli("train", "--config", str(tmp_path / "bomb.yaml"), "--print-config", timeout=60))
    assert time.monotonic() - start < 30
    assert line.endswith("bomb.yaml uses the alias *a (line 2): aliases are not read in configs; write the value out")


@pytest.mark.parametrize(("env", "message"), [
    ({"WORLD_SIZE": "2"}, "WORLD_SIZE=2 asks for 2 processes, but RANK, MASTER_ADDR, MASTER_PORT are not set"),
    ({"WORLD_SIZE": "abc"}, "WORLD_SIZE='abc' is not a whole number"),
    ({"WORLD_SIZE": "2", "RANK": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"},
     "RANK=2 with WORLD_SIZE=2 describes no run"),
    ({"EFFICIENTVIM_GEMM": "bogus"}, "EFFICIENTVIM_GEMM='bogus' names no GEMM library: set it to mkl or onednn"),
])
def test_stray_environment_variables_are_one_line(tmp_path, env, message):
    line = one_line_error(cli("train", "--epochs", "1", "--output", str(tmp_path / "run"), env=env, timeout=120))
    assert message in line
    assert not (tmp_path / "run").exists()


def test_a_run_waiting_for_processes_that_never_come_says_so_and_gives_up(tmp_path):
    if os.geteuid() != 0 or subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode:
        pytest.skip("a private network namespace (unshare -n) needs root (CI runs as root)")
    env = {"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29531",
           "EFFICIENTVIM_JOIN_TIMEOUT": "4", "PYTHONPATH": str(SRC)}
    command = "ip link set lo up && exec " + " ".join([sys.executable, "-m", "efficientvim", "train", "--epochs", "1",
                                                        "--output", str(tmp_path / "run")])
    start = time.monotonic()
    result = subprocess.run(["unshare", "-n", "sh", "-c", command], capture_output=True, text=True, timeout=120,
                            env={**os.environ, **env})
    assert time.monotonic() - start < 60
    assert "note: rank 0 waits for all 2 processes (WORLD_SIZE) to join at 127.0.0.1:29531" in result.stderr
    assert "error: gave up after 4 s: rank 0 waits for all 2 processes" in one_line_error(result)
    assert not (tmp_path / "run").exists()


def test_an_image_size_beyond_reason_is_one_line(tiny_checkpoint, tmp_path):
    _png(tmp_path / "x.png", 64, 64)
    line = one_line_error(cli("predict", str(tmp_path / "x.png"), "--checkpoint", str(tiny_checkpoint),
                              "--img-size", "50000"))
    assert line.endswith("argument --img-size: must be at most 4096 (the largest input side supported and measured, "
                         "docs/research.md), got 50000 (see efficientvim predict --help)")
    (tmp_path / "big.yaml").write_text("img_size: 50000\n")
    line = one_line_error(cli("train", "--config", str(tmp_path / "big.yaml"), "--print-config"))
    assert "img_size must be from 64 (the network's total stride) to 4096, not 50000" in line


# 4. no silent wrong answers


def _tar_with_links(tmp_path: Path) -> Path:
    import tarfile

    from PIL import Image

    for cls, colour in (("a", (250, 0, 0)), ("b", (0, 0, 250)), ("c", (0, 250, 0))):
        (tmp_path / "src" / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (48, 48), colour).save(tmp_path / "src" / cls / f"{i}.png")
    with tarfile.open(tmp_path / "data.tar", "w") as tar:
        tar.add(tmp_path / "src", arcname="val")
        for name, target in (("val/a/link.png", "nowhere/x.png"), ("val/b/0.png", "nowhere/y.png")):
            info = tarfile.TarInfo(name)  # a hard link to a file the tar does not hold (b/0.png: stored twice)
            info.type, info.linkname = tarfile.LNKTYPE, target
            tar.addfile(info)
    return tmp_path / "data.tar"


def test_a_tar_whose_links_point_nowhere_is_read_without_them(tmp_path, tiny_checkpoint):
    result = cli("eval", "--checkpoint", str(tiny_checkpoint), "--data", str(_tar_with_links(tmp_path)),
                 "--img-size", "64")
    assert result.returncode == 0, result.stderr
    assert " on 8 images: " in result.stdout  # a/0-2, b/1-2, c/0-2: b/0.png's last entry is the broken link
    assert "note: val: skipped 2 files: " in result.stderr
    for name, target in (("val/a/link.png", "nowhere/x.png"), ("val/b/0.png", "nowhere/y.png")):
        assert f"{name} (a link to {target}, which the tar does not hold as a file)" in result.stderr


def test_eval_leaves_unreadable_images_out_names_them_and_scores_the_rest(tmp_path, tiny_checkpoint):
    from PIL import Image

    torch.manual_seed(0)
    for cls in ("a", "b", "c"):
        (tmp_path / "val" / cls).mkdir(parents=True)
        for i in range(4):
            Image.effect_noise((48, 48), 60 + 20 * i).convert("RGB").save(tmp_path / "val" / cls / f"{i}.png")
    ok = cli("eval", "--checkpoint", str(tiny_checkpoint), "--data", str(tmp_path), "--img-size", "64")
    broken = [tmp_path / "val" / "a" / "1.png", tmp_path / "val" / "c" / "2.png"]
    for path in broken:  # complete files (end markers in place) whose data stream is damaged
        data = bytearray(path.read_bytes())
        data[60:400] = bytes(340)
        path.write_bytes(bytes(data))
    result = cli("eval", "--checkpoint", str(tiny_checkpoint), "--data", str(tmp_path), "--img-size", "64")
    assert ok.returncode == 0 and result.returncode == 0, result.stderr
    assert f"on 10 images (2 unreadable left out: {broken[0]}, {broken[1]}):" in result.stdout
    for path in broken:
        assert f"note: left out unreadable image: {path} could not be decoded" in result.stderr
        path.unlink()
    without = cli("eval", "--checkpoint", str(tiny_checkpoint), "--data", str(tmp_path), "--img-size", "64")
    score = result.stdout[result.stdout.index("top-1"):]
    assert " on 10 images: " in without.stdout and without.stdout.endswith(score)  # the score of what was read


def test_a_file_name_with_a_newline_cannot_forge_a_result_line(tmp_path, tiny_checkpoint):
    forged = tmp_path / "cat.png\n  1  100.00%  dog"
    _png(forged, 64, 64)
    result = cli("predict", str(forged), "--checkpoint", str(tiny_checkpoint), "--topk", "2")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == repr(str(forged)) and len(lines) == 3
