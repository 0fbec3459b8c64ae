"""Low precision on real data: a digits model trained here; int8 ONNX, LiteRT and ExecuTorch files calibrated
on its train split and scored on val, and eval / predict running the fused model in bf16.

The issue's bound (drop <= 0.5 pt) is measured on the full `make train` model in docs/benchmarks.md
(99.72% -> 99.72%); this run is 6 epochs (about 92% top-1) to keep the suite short, and a weaker model
sits closer to its decision boundaries, so it is held to 1 point and 97% agreement (measured: 0.3 pt, 98.3%).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import efficientvim as ev
from efficientvim.cli import main
from efficientvim.data import DigitsDataset
from efficientvim.predict import make_transform
from efficientvim.runtimes import auto_runtime

ort = pytest.importorskip("onnxruntime", reason="the [onnx] extra is not installed")


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", "--epochs", "6", "--workers", "0", "--output", str(out / "run")]) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def test_int8_export_keeps_the_digits_accuracy(digits_model, capsys):
    best, path = digits_model / "run" / "best.safetensors", digits_model / "int8.onnx"
    capsys.readouterr()
    argv = ["export", "--checkpoint", str(best), "--format", "onnx", "--precision", "int8", "-o", str(path)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "int8 QDQ, 7-bit weights, exact on every x86 CPU" in printed and "calibrated on 256 images" in printed
    assert "of 64 held-out images" in printed
    model = ev.load_model(best).eval()
    val = DigitsDataset("val", make_transform(model))
    x = torch.stack([val[i][0] for i in range(len(val))])
    y = np.array(val.targets)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        fp32 = model(x).argmax(1).numpy()
    int8 = session.run(None, {"images": x.numpy()})[0].argmax(1)
    top1_fp32, top1_int8 = 100 * (fp32 == y).mean(), 100 * (int8 == y).mean()
    assert top1_fp32 >= 80.0  # a trained model, or the comparison means nothing
    assert top1_int8 >= top1_fp32 - 1.0
    assert 100 * (int8 == fp32).mean() >= 97.0
    # the file says what it is and keeps the preprocessing and class names for OnnxPredictor
    import onnx

    meta = {p.key: json.loads(p.value) for p in onnx.load(str(path)).metadata_props}
    assert meta["precision"] == "int8" and meta["label_names"] == [str(d) for d in range(10)]
    assert meta["calibration"] == "256 images of the digits training split" and meta["weight_bits"] == 7
    # 7-bit weights: a pair of uint8 x int8 products is at most 2 x 255 x 64 = 32,640, inside the int16 sum that
    # CPUs without VNNI saturate (VPMADDUBSW): the file computes the same on every x86 CPU
    from onnx import numpy_helper

    initializers = onnx.load(str(path)).graph.initializer
    weights = [numpy_helper.to_array(t) for t in initializers if t.data_type == onnx.TensorProto.INT8]
    assert len(weights) > 20 and max(np.abs(w.astype(np.int32)).max() for w in weights) <= 64
    quantized = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "LayerNormalization", "Softmax"} <= quantized
    # every ReLU folded into the range of the product before it: none left to run between dequantize and quantize
    assert "Relu" not in quantized


@pytest.mark.parametrize("fmt", ["litert", "executorch"])
def test_int8_edge_formats_keep_the_digits_accuracy(digits_model, fmt, capsys):
    """LiteRT and ExecuTorch int8 (PT2E, XNNPACK's quantizer), run image by image in their own runtimes."""
    pytest.importorskip({"litert": "litert_torch", "executorch": "executorch"}[fmt],
                        reason=f"the [{fmt}] extra is not installed")
    from efficientvim.export import load_executorch, load_litert

    best, path = digits_model / "run" / "best.safetensors", digits_model / f"int8.{fmt}"
    path = path.with_suffix({"litert": ".tflite", "executorch": ".pte"}[fmt])
    assert main(["export", "--checkpoint", str(best), "--format", fmt, "--precision", "int8", "-o", str(path)]) == 0
    assert "calibrated on 256 images" in capsys.readouterr().out
    if fmt == "litert":
        program = load_litert(path, threads=1)
        run = lambda image: program(image[None].numpy())  # noqa: E731
    else:
        method = load_executorch(path)
        run = lambda image: method.execute([image[None]])[0].numpy()  # noqa: E731
    model = ev.load_model(best).eval()
    val = DigitsDataset("val", make_transform(model))
    x = torch.stack([val[i][0] for i in range(len(val))])
    y = np.array(val.targets)
    with torch.no_grad():
        fp32 = model(x).argmax(1).numpy()
    int8 = np.array([run(image).argmax() for image in x])
    top1_fp32, top1_int8 = 100 * (fp32 == y).mean(), 100 * (int8 == y).mean()
    assert top1_fp32 >= 80.0
    assert top1_int8 >= top1_fp32 - 1.0
    assert 100 * (int8 == fp32).mean() >= 97.0


def test_int8_calibrates_on_a_folder_and_reports_mistakes(digits_model, tmp_path, capsys):
    from PIL import Image

    best = digits_model / "run" / "best.safetensors"
    folder = tmp_path / "calib" / "nested"
    folder.mkdir(parents=True)
    digits = DigitsDataset("train")
    for i in range(40):
        digits.images[i].save(folder / f"{i}.png")
    (folder / "notes.txt").write_text("not an image")
    Image.new("RGB", (5, 5)).save(tmp_path / "calib" / "small.jpg")
    out = tmp_path / "m.onnx"
    argv = ["export", "--checkpoint", str(best), "--format", "onnx", "--precision", "int8", "-o", str(out)]
    assert main([*argv, "--calibration", str(tmp_path / "calib")]) == 0
    # a folder too small for 256 + 64 images still keeps a quarter of its images out of calibration to check on
    printed = capsys.readouterr().out
    assert "calibrated on 31 images" in printed and "% of 10 held-out images" in printed
    for extra, message in [
        (["--calibration", str(tmp_path / "nope")], "calibration folder"),
        (["--format", "torchscript"], "--precision int8 is written as ONNX"),
    ]:
        assert main([*argv, *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1
    fp32 = ["export", "--checkpoint", str(best), "--format", "onnx", "-o", str(out), "--calibration", str(folder)]
    assert main(fp32) == 2
    assert "--calibration applies to --precision int8 only" in capsys.readouterr().err


def test_eval_and_predict_run_the_fused_model_in_the_asked_precision(digits_model, capsys, monkeypatch, tmp_path):
    best = str(digits_model / "run" / "best.safetensors")
    tops = {}
    for precision in ("fp32", "bf16"):
        assert main(["eval", "--checkpoint", best, "--workers", "0", "--precision", precision]) == 0
        line = capsys.readouterr().out
        tops[precision] = float(line.split("top-1 ")[1].split("%")[0])
    assert abs(tops["bf16"] - tops["fp32"]) <= 1.0
    # a device without native bf16: fp32, said in one line
    import efficientvim.kernels

    monkeypatch.setattr(efficientvim.kernels, "native_precision", lambda dtype, device: "no bf16 here (test)")
    DigitsDataset("val").images[0].save(tmp_path / "digit.png")
    assert main(["predict", str(tmp_path / "digit.png"), "--checkpoint", best, "--precision", "bf16"]) == 0
    captured = capsys.readouterr()
    assert captured.err.splitlines() == ["note: no bf16 here (test): running fp32, which is faster here",
                                         f"runtime: {auto_runtime('fp32')[0]} fp32 ({auto_runtime('fp32')[1]}; "
                                         "--runtime chooses another)"]  # auto chooses for the precision run
    assert captured.out.startswith(str(tmp_path / "digit.png"))


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_eval_and_predict_run_in_a_file_runtime(digits_model, runtime, capsys, tmp_path, monkeypatch):
    """--runtime: the fused graph exported on the fly scores and ranks as the PyTorch model does."""
    pytest.importorskip(runtime, reason=f"the [{'onnx' if runtime == 'onnxruntime' else runtime}] extra is missing")
    best = str(digits_model / "run" / "best.safetensors")
    tops = {}
    for chosen in ("eager", runtime):
        assert main(["eval", "--checkpoint", best, "--workers", "0", "--runtime", chosen]) == 0
        line = capsys.readouterr().out
        tops[chosen] = (float(line.split("top-1 ")[1].split("%")[0]), float(line.split("loss ")[1]))
    assert tops[runtime][0] == tops["eager"][0] and abs(tops[runtime][1] - tops["eager"][1]) < 1e-4
    digits = DigitsDataset("val")
    for i in range(5):
        digits.images[i].save(tmp_path / f"{i}.png")
    answers = {}
    for chosen in ("eager", runtime):
        assert main(["predict", str(tmp_path), "--checkpoint", best, "--json", "--runtime", chosen]) == 0
        answers[chosen] = json.loads(capsys.readouterr().out)
    for ours, theirs in zip(answers["eager"], answers[runtime]):
        assert [p["label"] for p in ours["predictions"]] == [p["label"] for p in theirs["predictions"]]
        assert ours["predictions"][0]["probability"] == pytest.approx(theirs["predictions"][0]["probability"],
                                                                      abs=1e-4)
    # the command line lists the runtimes without importing torch: the same ones the module runs
    import argparse

    from efficientvim.cli.common import add_runtime_args
    from efficientvim.runtimes import INFERENCE_RUNTIMES

    parser = argparse.ArgumentParser()
    add_runtime_args(parser, "predict")
    choices = next(a.choices for a in parser._actions if a.dest == "runtime")
    assert tuple(choices) == ("auto", *INFERENCE_RUNTIMES)
    if runtime == "onnxruntime":  # what it cannot run is said in one line, naming what to do, on every CPU
        import efficientvim.kernels

        for cpu_says in (None, "this CPU has no native bfloat16 (test)"):  # a BF16 CPU, then one without
            monkeypatch.setattr(efficientvim.kernels, "native_precision", lambda dtype, device, why=cpu_says: why)
            for command in ("predict", "eval"):
                target = [str(tmp_path)] if command == "predict" else ["--workers", "0"]
                assert main([command, *target, "--checkpoint", best, "--runtime", runtime, "--precision",
                             "bf16"]) == 2
                err = capsys.readouterr().err
                assert "--runtime onnxruntime runs fp32, not bf16" in err and err.count("\n") == 1


def test_a_failed_quantization_leaves_nothing_in_the_working_directory(tmp_path, monkeypatch):
    """ONNX Runtime's shape inference fails on timm's EfficientViT and used to leave its weight files behind
    in the user's working directory (found by `efficientvim bench --precision int8` on the peers)."""
    import timm

    from efficientvim.export import write_onnx
    from efficientvim.quantize import quantize_onnx

    model = timm.create_model("efficientvit_m0", pretrained=False).eval()
    write_onnx(model, tmp_path / "peer.onnx")
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    images = [torch.randn(3, 224, 224) for _ in range(2)]
    with pytest.raises(Exception, match="symbolic shape inference"):
        quantize_onnx(tmp_path / "peer.onnx", tmp_path / "peer.int8.onnx", images)
    assert list(work.iterdir()) == []


def test_pt2e_x86_int8_keeps_the_digits_accuracy(digits_model):
    """PyTorch 2 export quantization with the X86 Inductor quantizer, compiled: the torch users' int8."""
    pytest.importorskip("torchao", reason="the [executorch] extra (which brings torchao) is not installed")
    from efficientvim.quantize import quantize_pt2e

    model = ev.load_model(digits_model / "run" / "best.safetensors").eval()
    int8 = quantize_pt2e(model)
    val = DigitsDataset("val", make_transform(model))
    x = torch.stack([val[i][0] for i in range(len(val))])
    y = np.array(val.targets)
    with torch.no_grad():
        fp32, got = model(x).argmax(1).numpy(), int8(x).argmax(1).numpy()
        one = int8(x[:1])  # a single image runs too (as a batch of two copies)
        torch.testing.assert_close(one, int8(x[:2])[:1], rtol=1e-5, atol=1e-5)
    assert 100 * (fp32 == y).mean() >= 80.0
    assert 100 * (got == y).mean() >= 100 * (fp32 == y).mean() - 1.0
    assert 100 * (got == fp32).mean() >= 97.0


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_int8_files_predict_the_same_on_a_cpu_without_vnni(digits_model, runtime, tmp_path):
    """The int8 files run on an AVX2-only CPU (no AVX-512, no VNNI: its saturating u8 x s8 kernels) as on this one.

    That CPU is emulated by QEMU (Debian's qemu-user, which `.ci/run` installs): the runtimes read its CPUID and
    take their AVX2 kernels. 8-bit weights lost 3-14 points of agreement there (benchmarks/int8_cpu_kinds.py)."""
    import shutil
    import sys

    pytest.importorskip(runtime, reason=f"the [{'onnx' if runtime == 'onnxruntime' else runtime}] extra is missing")
    if shutil.which("qemu-x86_64") is None:
        pytest.skip("qemu-x86_64 (Debian's qemu-user) is not installed: no CPU without VNNI to emulate")
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    from int8_cpu_kinds import run_child, write_inputs

    best = digits_model / "run" / "best.safetensors"
    fmt, path = ("onnx", tmp_path / "m.onnx") if runtime == "onnxruntime" else ("openvino", tmp_path / "m.xml")
    assert main(["export", "--checkpoint", str(best), "--format", fmt, "--precision", "int8", "-o", str(path)]) == 0
    write_inputs(ev.load_model(best).eval(), tmp_path / "val.npz")
    native, avx2 = (run_child(path, tmp_path / "val.npz", runtime, kind, timeout=600) for kind in ("native", "avx2"))
    # the emulated CPU really takes the saturating kernel (this one may or may not: VNNI, or ONEDNN_MAX_CPU_ISA)
    assert avx2["kernel"].startswith("saturating")
    assert avx2["images"] == native["images"] == 360
    assert avx2["agreement"] == native["agreement"] >= 97.0
    assert avx2["top1"] == native["top1"]


def test_quantize_onnx_quantizes_the_op_types_it_is_given(tmp_path):
    """The shipped op list leaves the token softmax in float32; ``ops`` with Softmax gives ONNX Runtime a
    QLinearSoftmax (what benchmarks/int8_softmax.py times and scores)."""
    import onnx

    from efficientvim.export import write_onnx
    from efficientvim.quantize import QUANTIZED_OPS, quantize_onnx

    class ConvSoftmax(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x).flatten(2).softmax(-1)

    torch.manual_seed(0)
    write_onnx(ConvSoftmax().eval(), tmp_path / "fp32.onnx", (8, 8))
    images = [torch.randn(3, 8, 8) for _ in range(8)]
    runs = {}
    for name, ops in (("shipped", QUANTIZED_OPS), ("softmax", (*QUANTIZED_OPS, "Softmax"))):
        quantize_onnx(tmp_path / "fp32.onnx", tmp_path / f"{name}.onnx", images, ops=ops)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.optimized_model_filepath = str(tmp_path / f"{name}.run.onnx")
        session = ort.InferenceSession(str(tmp_path / f"{name}.onnx"), options, providers=["CPUExecutionProvider"])
        runs[name] = session.run(None, {"images": images[0][None].numpy()})[0]
        ran = [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]
        assert ran.count("QLinearSoftmax") == (name == "softmax") and ran.count("Softmax") == (name == "shipped")
    # both are distributions over the 64 positions, the uint8 one in steps of 1/255
    for out in runs.values():
        np.testing.assert_allclose(out.sum(-1), 1.0, atol=0.1)
    assert np.abs(runs["softmax"] - runs["shipped"]).max() <= 2 / 255 + 0.02
