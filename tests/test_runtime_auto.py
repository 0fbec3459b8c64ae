"""--runtime auto, the default of predict, eval, embed and the demo: the fastest installed runtime, said on stderr,
answering as eager PyTorch does; the ONNX graph it runs cached per weights, safely; OnnxPredictor's runtimes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

import efficientvim as ev
from efficientvim import onnx_cache, runtimes, sessions
from efficientvim.cli import main

pytest.importorskip("onnxruntime", reason="the [onnx] extra is missing")
AUTO_FP32 = "runtime: onnxruntime fp32 (the fastest fp32 runtime on a CPU; --runtime chooses another)\n"


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i, (size, suffix) in enumerate([((97, 131), "png"), ((300, 200), "jpg"), ((64, 64), "webp")]):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"{i}.{suffix}")
    return folder


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache of this test's own."""
    monkeypatch.setenv(onnx_cache.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache" / "onnx"


def predict_json(capsys, *args: str) -> tuple[list, str]:
    assert main(["predict", *args, "--json"]) == 0
    captured = capsys.readouterr()
    return json.loads(captured.out), captured.err


def assert_same_answers(ours: list, theirs: list) -> None:
    assert [r["image"] for r in ours] == [r["image"] for r in theirs]
    for a, b in zip(ours, theirs):
        assert [p["label"] for p in a["predictions"]] == [p["label"] for p in b["predictions"]]
        assert [p["probability"] for p in a["predictions"]] == pytest.approx(
            [p["probability"] for p in b["predictions"]], abs=1e-5)


def test_auto_takes_the_first_installed_runtime_of_the_rule(monkeypatch):
    present = {"onnx", "onnxruntime", "openvino"}
    monkeypatch.setattr(sessions, "installed", lambda module: module in present)
    assert runtimes.auto_runtime("fp32") == ("onnxruntime", "the fastest fp32 runtime on a CPU")
    assert runtimes.auto_runtime("bf16") == ("openvino", "the fastest bf16 runtime on a CPU")
    assert runtimes.auto_runtime("fp32", "cuda") == ("eager", "PyTorch is the runtime here that runs on cuda")
    present.discard("onnxruntime")
    assert runtimes.auto_runtime("fp32") == (
        "openvino", "the fastest fp32 runtime installed (onnxruntime is not installed)")
    present.discard("onnx")  # both file runtimes run the ONNX export
    assert runtimes.auto_runtime("fp32") == (
        "eager", "the fastest fp32 runtime installed (onnxruntime is not installed; openvino is not installed)")
    assert runtimes.auto_runtime("bf16")[0] == "eager"


def test_predict_runs_onnx_runtime_by_default_and_answers_as_eager(checkpoint, photos, cache, capsys):
    ours, err = predict_json(capsys, str(photos), "--checkpoint", str(checkpoint))
    assert err == AUTO_FP32
    [graph] = cache.glob("*.onnx")  # the graph ONNX Runtime ran, traced once
    eager, err = predict_json(capsys, str(photos), "--checkpoint", str(checkpoint), "--runtime", "eager")
    assert err == ""
    assert_same_answers(ours, eager)
    assert len(ours) == 3  # the same ranks and probabilities to 1e-5, from ONNX Runtime (its graph is cached above)
    # the next command on the same weights reads the cached graph instead of tracing it again
    first = graph.stat()
    again, _ = predict_json(capsys, str(photos / "0.png"), "--checkpoint", str(checkpoint))
    assert again == ours[:1] and list(cache.glob("*.onnx")) == [graph] and graph.stat().st_ino == first.st_ino


def test_eval_and_embed_run_onnx_runtime_by_default_and_score_as_eager(checkpoint, photos, tmp_path, capsys):
    pytest.importorskip("pyarrow", reason="the [parquet] extra is missing")
    import pyarrow.parquet as pq

    tables = {}
    for runtime in ("auto", "eager"):
        out = tmp_path / f"{runtime}.parquet"
        assert main(["embed", str(photos), "--checkpoint", str(checkpoint), "-o", str(out), "--runtime", runtime,
                     "-q"]) == 0
        captured = capsys.readouterr()
        assert captured.err.startswith(AUTO_FP32) == (runtime == "auto"), captured.err
        tables[runtime] = pq.read_table(out).sort_by("path")
    auto, eager = (np.stack(tables[r].column("embedding").to_pylist()) for r in ("auto", "eager"))
    assert auto.shape == (3, ev.load_model(checkpoint).num_features)
    assert np.abs(auto - eager).max() <= 1e-4 * np.abs(eager).max()
    assert pq.read_schema(tmp_path / "auto.parquet").metadata[b"efficientvim"].find(b'"runtime": "onnxruntime"') > 0


def test_a_damaged_or_planted_cache_entry_is_replaced_never_read(checkpoint, photos, cache, capsys, tmp_path):
    reference, _ = predict_json(capsys, str(photos), "--checkpoint", str(checkpoint))
    [graph] = cache.glob("*.onnx")
    graph.write_bytes(b"not an onnx file")  # a damaged entry: traced again
    answers, err = predict_json(capsys, str(photos), "--checkpoint", str(checkpoint))
    assert answers == reference and err == AUTO_FP32 and graph.stat().st_size > 1000
    other = tmp_path / "other.onnx"  # a link planted under the entry's name is removed, its target untouched
    other.write_bytes(b"somebody else's file")
    graph.unlink()
    graph.symlink_to(other)
    answers, _ = predict_json(capsys, str(photos), "--checkpoint", str(checkpoint))
    assert answers == reference and not graph.is_symlink() and other.read_bytes() == b"somebody else's file"
    assert sorted(p.name for p in cache.iterdir()) == [graph.name]  # no temporary file left


def test_where_nothing_can_be_cached_the_graph_is_traced_for_the_run(checkpoint, photos, tmp_path, monkeypatch,
                                                                       capsys):
    reference, _ = predict_json(capsys, str(photos), "--checkpoint", str(checkpoint), "--runtime", "eager")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(onnx_cache.CACHE_ENV, str(blocker))  # the cache folder cannot be made
    answers, err = predict_json(capsys, str(photos), "--checkpoint", str(checkpoint))
    assert_same_answers(answers, reference)
    assert err == AUTO_FP32 and blocker.read_text() == ""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("a full disk is made with a small tmpfs, which needs root")
    disk = tmp_path / "full"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(disk)]).returncode:
        pytest.skip("mounting a tmpfs is not allowed here")
    try:
        monkeypatch.setenv(onnx_cache.CACHE_ENV, str(disk))
        answers, err = predict_json(capsys, str(photos), "--checkpoint", str(checkpoint))
        assert_same_answers(answers, reference)
        assert err == AUTO_FP32 and [p.name for p in (disk / "onnx").iterdir()] == []  # no partial file left
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_the_cache_keeps_the_most_recently_used_graphs(tmp_path, monkeypatch):
    monkeypatch.setenv(onnx_cache.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(onnx_cache, "KEEP", 2)
    model = ev.create_model("efficientvim_m1", num_classes=2, embed_dim=(16, 32, 48), depths=(1, 1, 1),
                            state_dim=(4, 4, 4)).eval()
    writes = []

    def write(path):
        writes.append(path)
        path.write_bytes(b"graph")

    for size in ((64, 64), (96, 96), (64, 64), (128, 128)):  # 64 is used again before 128 evicts one graph
        assert onnx_cache.load_cached_onnx(model, size, write, lambda path: path.read_bytes()) == b"graph"
    assert len(writes) == 3
    kept = {p.name for p in (tmp_path / "onnx").iterdir()}
    assert kept == {f"{onnx_cache.model_key(model, s)}.onnx" for s in ((64, 64), (128, 128))}
    # another model's weights are another graph
    other = ev.create_model("efficientvim_m1", num_classes=2, embed_dim=(16, 32, 48), depths=(1, 1, 1),
                            state_dim=(4, 4, 4)).eval()
    assert onnx_cache.model_key(other, (64, 64)) != onnx_cache.model_key(model, (64, 64))


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_onnx_predictor_runs_in_either_runtime_with_the_same_answers(checkpoint, photos, tmp_path, runtime,
                                                                     monkeypatch):
    pytest.importorskip(runtime, reason=f"the [{'onnx' if runtime == 'onnxruntime' else runtime}] extra is missing")
    from efficientvim.export import export_onnx
    from efficientvim.onnx_predictor import OnnxPredictor

    path = tmp_path / "m.onnx"
    export_onnx(ev.load_model(checkpoint), path)
    images = sorted(photos.iterdir())
    auto = OnnxPredictor(path)
    chosen = OnnxPredictor(path, threads=1, runtime=runtime)
    assert auto.runtime == "onnxruntime" and chosen.runtime == runtime
    ours, theirs = auto.predict(images, top_k=4), chosen.predict(images, top_k=4)
    for a, b in zip(ours, theirs):
        assert [n for n, _ in a] == [n for n, _ in b]
        assert [p for _, p in a] == pytest.approx([p for _, p in b], abs=1e-5)
    with pytest.raises(ValueError, match="unknown runtime 'tensorrt': choose from auto, onnxruntime, openvino"):
        OnnxPredictor(path, runtime="tensorrt")
    if runtime == "openvino":  # without ONNX Runtime, auto takes OpenVINO
        monkeypatch.setattr(sessions, "installed", lambda module: module != "onnxruntime")
        assert OnnxPredictor(path).runtime == "openvino"


def test_without_a_home_folder_nothing_is_cached_and_the_run_goes_on(checkpoint, photos, monkeypatch, capsys):
    from pathlib import Path

    def no_home():
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.delenv(onnx_cache.CACHE_ENV)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setattr(Path, "home", staticmethod(no_home))
    answers, err = predict_json(capsys, str(photos), "--checkpoint", str(checkpoint))
    assert err == AUTO_FP32 and len(answers) == 3
