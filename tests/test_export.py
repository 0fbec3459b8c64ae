"""ONNX / TorchScript export: the written files compute what the PyTorch model computes."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import efficientvim
from conftest import randomize_, relative_error
from efficientvim import export
from efficientvim.cli import main
from efficientvim.deploy import FloatInterface
from efficientvim.errors import ExportError
from efficientvim.export import export_onnx, export_torchscript, verify
from efficientvim.onnx_predictor import OnnxPredictor

TINY = dict(embed_dim=(32, 48, 64), depths=(1, 1, 1), state_dim=(8, 6, 4))


def _tiny(seed: int = 0, **kwargs) -> torch.nn.Module:
    kwargs = {"num_classes": 4, "img_size": 64, **TINY, **kwargs}
    return randomize_(efficientvim.create_model("efficientvim_m1", **kwargs), seed).eval()


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    model = _tiny(num_classes=3)
    model.pretrained_cfg["label_names"] = ["cat", "dog", "fox"]
    path = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    error = export_onnx(model, path)
    return model, path, error


def test_onnx_export_matches_pytorch_on_a_non_square_batch_of_two(onnx_file):
    import onnxruntime as ort

    model, path, error = onnx_file
    assert 0 <= error <= 1e-4
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(2, 3, 128, 192, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x).numpy()
    got = session.run(None, {"images": x.numpy()})[0]
    assert got.shape == (2, 3)
    assert relative_error(expected, got) < 1e-4


def test_onnx_export_has_dynamic_batch_height_width_and_a_recent_opset(onnx_file):
    import onnx

    proto = onnx.load(str(onnx_file[1]))
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, "height", "width"]
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17


def test_feature_extractor_exports_every_level_to_onnx(tmp_path):
    import onnxruntime as ort

    model = efficientvim.create_model("efficientvim_m1", features_only=True, out_indices=(2,), stem_strides=(8,),
                                      **TINY)
    model = randomize_(model)
    model.eval()
    export_onnx(model, tmp_path / "features.onnx", img_size=64)
    session = ort.InferenceSession(str(tmp_path / "features.onnx"), providers=["CPUExecutionProvider"])
    x = torch.randn(2, 3, 64, 128)
    with torch.no_grad():
        expected = [t.numpy() for t in model(x)]
    got = session.run(None, {"images": x.numpy()})
    assert [g.shape for g in got] == [e.shape for e in expected] == [(2, 16, 8, 16), (2, 64, 1, 2)]
    assert [o.name for o in session.get_outputs()] == ["stride8", "stride64"]
    assert max(relative_error(e, g) for e, g in zip(expected, got)) < 1e-4


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_export_matches_pytorch_on_a_non_square_batch_and_keeps_the_models_mode(tmp_path):
    model = _tiny(seed=2).train()
    path = tmp_path / "tiny.pt"
    assert export_torchscript(model, path) <= 1e-4
    assert model.training
    model.eval()
    loaded = torch.jit.load(str(path))
    x = torch.randn(2, 3, 192, 128)
    with torch.no_grad():
        assert relative_error(model(x).numpy(), loaded(x).numpy()) < 1e-4


def test_export_refuses_to_report_success_when_the_check_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(verify, "EXPORT_TOLERANCE", 0.0)  # any rounding difference now counts as a mismatch
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export_torchscript(_tiny(), tmp_path / "tiny.pt")


def test_onnx_predictor_preprocesses_like_timm_eval_transforms(onnx_file):
    import timm.data

    model, path, _ = onnx_file
    predictor = OnnxPredictor(path)
    transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 130, 3), dtype=np.uint8))
    expected = transform(image).numpy()
    got = predictor.preprocess(np.asarray(image))
    assert got.shape == expected.shape == (3, 64, 64)
    assert np.abs(got - expected).max() < 1e-5


def test_onnx_predictor_returns_the_models_top_classes_with_probabilities(onnx_file):
    model, path, _ = onnx_file
    predictor = OnnxPredictor(path, threads=1)
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (80, 80, 3), dtype=np.uint8))
    [top] = predictor.predict(image, top_k=2)
    with torch.no_grad():
        probs = model(torch.from_numpy(predictor.preprocess(image))[None]).softmax(-1)[0].numpy()
    order = np.argsort(-probs)[:2]
    assert [name for name, _ in top] == [["cat", "dog", "fox"][i] for i in order]
    assert np.allclose([p for _, p in top], probs[order], atol=1e-5)


def test_onnx_predictor_takes_paths_pil_images_and_arrays_alike(onnx_file, tmp_path):
    _, path, _ = onnx_file
    predictor = OnnxPredictor(path)
    pixels = np.random.default_rng(2).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "photo.png")
    by_path, by_str, by_image, by_array = (predictor.predict(x)[0] for x in (
        tmp_path / "photo.png", str(tmp_path / "photo.png"), Image.fromarray(pixels), pixels))
    assert by_path == by_str == by_image == by_array


def test_onnx_predictor_labels_a_1000_class_model_as_the_cli_does(tmp_path, capsys):
    model = _tiny(num_classes=1000)
    path = tmp_path / "in1k.onnx"
    export_onnx(model, path)
    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(image)
    ours = OnnxPredictor(path).predict(image, top_k=3)[0]
    efficientvim.save_weights(model, tmp_path / "in1k.safetensors")
    assert main(["predict", str(image), "--checkpoint", str(tmp_path / "in1k.safetensors"), "--topk", "3",
                 "--json"]) == 0
    cli = json.loads(capsys.readouterr().out)[0]["predictions"]
    assert [name for name, _ in ours] == [p["label"] for p in cli]
    assert all(not name.isdigit() for name, _ in ours)  # ImageNet's names, not indices


def test_onnx_predictor_imports_without_torch(onnx_file, tmp_path):
    _, path, _ = onnx_file
    code = ("import sys; from efficientvim.onnx_predictor import OnnxPredictor; "
            f"print(OnnxPredictor({str(path)!r}).predict(__import__('numpy').zeros((64, 64, 3), 'uint8'))[0][0][0]); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'timm')))")
    src = str(Path(efficientvim.__file__).resolve().parents[1])
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    (tmp_path / "tmp").mkdir()
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**env, "PYTHONPATH": src, "TMPDIR": str(tmp_path / "tmp")})
    assert run.returncode == 0, run.stderr
    label, modules = run.stdout.strip().splitlines()
    assert label in ("cat", "dog", "fox") and modules == "[]"
    # ONNX Runtime's telemetry is off: it would have kept a device id in $TMPDIR/.ses (and sent events)
    assert list((tmp_path / "tmp").iterdir()) == []


def test_export_cli_writes_a_verified_onnx_file(tmp_path, capsys):
    out = tmp_path / "m1.onnx"
    assert main(["export", "efficientvim_m1", "--format", "onnx", "-o", str(out), "--img-size", "64"]) == 0
    assert out.is_file()
    assert "max relative error vs PyTorch" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["export", "efficientvim_m9", "--format", "onnx", "-o", "{tmp}/x.onnx"], "unknown model 'efficientvim_m9'"),
        (["export", "efficientvim_m1", "--format", "onnx", "-o", "{tmp}/no/x.onnx"], "does not exist"),
        (["export", "efficientvim_m1", "--format", "onnx", "--opset", "13", "-o", "{tmp}/x.onnx"],
         "--opset: must be 17 or newer, got 13"),
        (["export", "efficientvim_m1", "--checkpoint", "{tmp}/none.pth", "--format", "onnx", "-o", "{tmp}/x.onnx"],
         "not found"),
        (["export", "efficientvim_m1", "--format", "onnx", "--precision", "bf16", "-o", "{tmp}/x.onnx"],
         "--precision bf16 is written as torchscript, not onnx: use one of those or --precision fp32 (OpenVINO"),
        (["export", "efficientvim_m1", "--format", "executorch", "--precision", "fp16", "-o", "{tmp}/x.pte"],
         "--precision fp16 is written as onnx, torchscript, openvino, coreml, not executorch"),
    ],
)
def test_export_cli_reports_user_mistakes_in_one_line_with_exit_code_2(tmp_path, capsys, argv, message):
    code = main([a.format(tmp=tmp_path) for a in argv])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("efficientvim export: error: ") and message in err
    assert err.count("\n") == 1


def test_openvino_export_matches_pytorch_with_dynamic_sizes_and_keeps_the_metadata(tmp_path):
    ov = pytest.importorskip("openvino", reason="the [openvino] extra is not installed")
    model = randomize_(efficientvim.create_model("efficientvim_m1_dist", num_classes=3, **TINY)).eval()
    model.pretrained_cfg["label_names"] = ["cat", "dog", "fox"]
    from efficientvim.export import export_openvino

    report = export_openvino(model, tmp_path / "m.xml", img_size=64)
    assert report["error"] <= 1e-4 and (tmp_path / "m.bin").is_file()
    read = ov.Core().read_model(str(tmp_path / "m.xml"))
    assert json.loads(read.get_rt_info(["efficientvim", "label_names"]).astype(str)) == ["cat", "dog", "fox"]
    assert read.inputs[0].get_partial_shape().is_dynamic
    compiled = ov.Core().compile_model(read, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    x = torch.randn(3, 3, 96, 160)  # another batch and a non-square size than the export's checks
    with torch.no_grad():
        expected = model(x).numpy()
    got = compiled(x.numpy())[compiled.outputs[0]]
    assert np.abs(got - expected).max() / np.abs(expected).max() <= 1e-4
    with pytest.raises(efficientvim.EfficientViMError, match=r"an OpenVINO model .* is a \.xml file: name it m\.xml"):
        export_openvino(model, tmp_path / "m.bin")


def test_openvino_int8_and_a_missing_extra_through_the_command(tmp_path, monkeypatch, capsys):
    pytest.importorskip("openvino", reason="the [openvino] extra is not installed")
    model = randomize_(efficientvim.create_model("efficientvim_m1", num_classes=10, **TINY)).eval()
    path = efficientvim.save_weights(model, tmp_path / "w.safetensors")
    argv = ["export", "--checkpoint", str(path), "--format", "openvino", "--precision", "int8", "-o",
            str(tmp_path / "q.xml")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "int8 QDQ ONNX" in out and "% of 64 held-out images (OpenVINO's CPU runtime)" in out
    monkeypatch.setitem(sys.modules, "openvino", None)
    assert main([*argv[:-1], str(tmp_path / "again.xml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("needs openvino, which is not installed: pip install 'efficientvim[openvino]'")


def test_executorch_export_runs_in_executorch_and_matches_pytorch(tmp_path, capsys):
    pytest.importorskip("executorch", reason="the [executorch] extra is not installed")
    model = randomize_(efficientvim.create_model("efficientvim_m1", num_classes=10, **TINY)).eval()
    path = efficientvim.save_weights(model, tmp_path / "w.safetensors")
    argv = ["export", "--checkpoint", str(path), "--format", "executorch", "--img-size", "64"]
    assert main([*argv, "-o", str(tmp_path / "m.pte")]) == 0
    out = capsys.readouterr().out
    error = float(out.rsplit(" ", 1)[1])
    assert error <= 1e-4 and "input fixed at batch 1" in out
    # every convolution is delegated to XNNPACK (a per-call weight view once kept all 1x1 convolutions out)
    from efficientvim.export import lower_executorch

    _, outside = lower_executorch(efficientvim.fuse(model, layout="channels_first"), torch.zeros(1, 3, 64, 64))
    assert "convolution" not in outside and outside.get("native_layer_norm") == 3 + 4, outside  # blocks, head
    # the B/C/dt splits, the broadcasts of 3-D products and the SE means run in XNNPACK too (slices, bmm and
    # 4-D means); only the head's means over states and tokens stay outside
    assert not {"split_with_sizes_copy", "expand_copy"} & set(outside) and outside.get("mean") == 4, outside
    meta = json.loads((tmp_path / "m.json").read_text())
    assert meta["input_shape"] == [1, 3, 64, 64] and meta["precision"] == "fp32"
    assert main([*argv, "--precision", "int8", "-o", str(tmp_path / "q.pte")]) == 0
    out = capsys.readouterr().out
    assert "calibrated on 256 images" in out and "% of 64 held-out images (ExecuTorch's runtime)" in out
    assert main([*argv, "-o", str(tmp_path / "m.bin")]) == 2
    assert "an ExecuTorch program is a .pte file: name it m.pte" in capsys.readouterr().err


def test_litert_export_runs_in_litert_and_matches_pytorch(tmp_path, capsys, monkeypatch):
    pytest.importorskip("litert_torch", reason="the [litert] extra is not installed")
    from efficientvim.export import load_litert

    model = randomize_(efficientvim.create_model("efficientvim_m1", num_classes=10, **TINY)).eval()
    path = efficientvim.save_weights(model, tmp_path / "w.safetensors")
    argv = ["export", "--checkpoint", str(path), "--format", "litert", "--img-size", "64"]
    assert main([*argv, "-o", str(tmp_path / "m.tflite")]) == 0
    out = capsys.readouterr().out
    assert "LiteRT flatbuffer, fp32, input fixed at batch 1" in out and "LiteRT's interpreter" in out
    assert float(out.rsplit(" ", 1)[1]) <= 1e-4
    # as a user runs it: the file alone, in LiteRT's interpreter, on an image it was not checked on
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x).numpy()
    got = load_litert(tmp_path / "m.tflite", threads=1)(x.numpy())
    assert got.dtype == np.float32 and np.abs(got - expected).max() / np.abs(expected).max() <= 1e-4
    meta = json.loads((tmp_path / "m.json").read_text())
    assert meta["input_shape"] == [1, 3, 64, 64] and meta["label_names"] == [f"class {i}" for i in range(10)]
    assert main([*argv, "-o", str(tmp_path / "m.lite")]) == 2
    assert "a LiteRT model is a .tflite file: name it m.tflite" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "litert_torch", None)
    assert main([*argv, "-o", str(tmp_path / "again.tflite")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("needs litert_torch, which is not installed: pip install 'efficientvim[litert]'")


def test_coreml_export_converts_with_standard_ops_and_metadata(tmp_path, capsys):
    ct = pytest.importorskip("coremltools", reason="the [coreml] extra is not installed")
    import collections
    import platform

    model = randomize_(efficientvim.create_model("efficientvim_m1", num_classes=10, **TINY)).eval()
    path = efficientvim.save_weights(model, tmp_path / "w.safetensors")
    out = tmp_path / "m.mlpackage"
    argv = ["export", "--checkpoint", str(path), "--format", "coreml", "--img-size", "64", "-o", str(out)]
    assert main(argv) == 0 and main(argv) == 0  # a second export replaces the package
    printed = capsys.readouterr().out
    if platform.system() != "Darwin":
        assert printed.strip().endswith("converted but not checked: Core ML predicts on macOS only")
    package = ct.models.MLModel(str(out), skip_model_load=True)
    assert json.loads(package.user_defined_metadata["input_size"]) == [3, 224, 224]
    assert json.loads(package.user_defined_metadata["precision"]) == "fp32"
    spec = package.get_spec()
    ops = collections.Counter(op.type for f in spec.mlProgram.functions.values()
                              for block in f.block_specializations.values() for op in block.operations)
    # only Core ML's own layers (LayerNorm included): nothing that keeps a model off the Neural Engine
    assert ops["layer_norm"] > 0 and ops["conv"] > 0
    assert set(ops) <= {"const", "conv", "reshape", "transpose", "mul", "add", "linear", "relu", "split",
                        "matmul", "layer_norm", "softmax", "sigmoid", "silu", "reduce_mean", "concat", "cast",
                        "slice_by_index", "sub", "real_div", "squeeze", "expand_dims"}, set(ops)
    assert main([*argv[:-1], str(tmp_path / "m.onnx")]) == 2
    assert "a Core ML ML Program is a .mlpackage file: name it m.mlpackage" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("fmt, precision", [("onnx", "fp16"), ("torchscript", "fp16"), ("torchscript", "bf16")])
def test_low_precision_files_compute_in_it_behind_a_float32_interface(tmp_path, fmt, precision):
    """fp16/bf16 files: weights in that dtype, float32 images in and outputs out, as close to the float32 model
    as the model itself run in that precision (the export's tolerance: twice that error)."""
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    model = _tiny(seed=3)
    x = torch.randn(2, 3, 96, 160, generator=torch.Generator().manual_seed(4))  # not the export's check sizes
    with torch.no_grad():
        expected = model(x).numpy()
        own = relative_error(expected, copy.deepcopy(model).to(dtype)(x.to(dtype)).float().numpy())
    path = tmp_path / f"tiny.{precision}.{'onnx' if fmt == 'onnx' else 'pt'}"
    if fmt == "onnx":
        import onnx
        import onnxruntime as ort

        error = export_onnx(model, path, precision=precision)
        proto = onnx.load(str(path))
        weights = [t for t in proto.graph.initializer if len(t.dims) == 4]  # the convolutions' kernels
        assert weights and {t.data_type for t in weights} == {onnx.TensorProto.FLOAT16}
        assert [v.type.tensor_type.elem_type for v in (*proto.graph.input, *proto.graph.output)] == [
            onnx.TensorProto.FLOAT] * 2
        assert {p.key: json.loads(p.value) for p in proto.metadata_props}["precision"] == "fp16"
        got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"images": x.numpy()})[0]
    else:
        error = export_torchscript(model, path, precision=precision)
        loaded = torch.jit.load(str(path))
        assert {p.dtype for p in loaded.parameters()} == {dtype}
        with torch.no_grad():
            out = loaded(x)
        assert out.dtype == torch.float32
        got = out.numpy()
    assert error > 0 and relative_error(expected, got) <= 2 * own
    assert own > 1e-4  # the bound is the low precision's, not float32's


def test_the_command_line_offers_each_precision_for_the_formats_that_write_it():
    from efficientvim.cli import export as command

    assert command.LOW_PRECISION_FORMATS == export.LOW_PRECISION_FORMATS  # the CLI's copy does not import torch


def test_a_low_precision_file_further_off_than_the_model_itself_is_refused(tmp_path, monkeypatch):
    forward = FloatInterface.forward
    monkeypatch.setattr(FloatInterface, "forward", lambda self, x: forward(self, x) * 1.05)
    with pytest.raises(ExportError, match=r"differs from PyTorch by .* \(tolerance .*: twice the model's own fp16"):
        export_onnx(_tiny(), tmp_path / "off.onnx", precision="fp16")


def test_a_model_whose_values_leave_the_precision_is_refused_in_it(tmp_path):
    """A default-initialised trunk ends in maps of about 1e-10, below float16's range: its own fp16 error is
    huge, and a bound of twice that would pass any file."""
    model = efficientvim.create_model("efficientvim_m1", features_only=True).eval()
    with pytest.raises(ExportError, match=r"the model itself is off by .* in fp16 .*: export it in fp32 or bf16"):
        export_onnx(model, tmp_path / "features.onnx", precision="fp16", img_size=128)


def test_openvino_fp16_stores_half_the_weights_and_says_so(tmp_path):
    ov = pytest.importorskip("openvino", reason="the [openvino] extra is not installed")
    from efficientvim.export import export_openvino

    model = _tiny(seed=5)
    assert export_openvino(model, tmp_path / "fp32.xml")["error"] <= 1e-4
    assert export_openvino(model, tmp_path / "fp16.xml", precision="fp16")["error"] > 1e-4  # fp16 weights
    size = {p: (tmp_path / f"{p}.bin").stat().st_size for p in ("fp32", "fp16")}
    assert 0.45 < size["fp16"] / size["fp32"] < 0.6
    read = ov.Core().read_model(str(tmp_path / "fp16.xml"))
    assert json.loads(read.get_rt_info(["efficientvim", "precision"]).astype(str)) == "fp16"


def test_the_format_registry_writes_and_reads_back_what_the_command_line_offers(tmp_path):
    """FORMATS: one entry per format the CLI lists, with the precisions the CLI accepts for it; each format's
    writer returns the report the CLI prints and its loader runs the file as PyTorch runs the model."""
    from efficientvim.cli import export as command
    from efficientvim.export import FORMATS

    assert tuple(FORMATS) == command.FORMATS
    for precision, formats in export.LOW_PRECISION_FORMATS.items():
        assert {f for f, fmt in FORMATS.items() if precision in fmt.precisions} == set(formats)
    assert {f for f, fmt in FORMATS.items() if "int8" in fmt.precisions} == {"onnx", "openvino", "executorch", "litert"}
    model = randomize_(efficientvim.create_model("efficientvim_m1", embed_dim=(32, 48, 64), depths=(1, 1, 1),
                                                 state_dim=(8, 6, 4), num_classes=4)).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x).numpy()
    for name in ("onnx", "torchscript", "openvino"):
        fmt = FORMATS[name]
        if fmt.extra and importlib.util.find_spec({"onnx": "onnxruntime"}.get(fmt.extra, fmt.extra)) is None:
            continue
        path = tmp_path / f"m{fmt.suffix}"
        report = fmt.write(model, path, img_size=64)
        assert report["error"] < 1e-4 and report["what"] and report["runtime"]
        np.testing.assert_allclose(fmt.load(path)(x.numpy()), expected, rtol=1e-4, atol=1e-4)


def test_an_int8_program_of_a_batch_is_calibrated_in_batches_of_its_size():
    """bench times int8 ExecuTorch and LiteRT programs at batch 32: the graph, exported at a fixed batch, is
    calibrated on batches of that size (image by image it failed to reshape, for every model) and runs a batch
    near the float model (the quantizer both lowerings call, without the minutes of lowering)."""
    pytest.importorskip("executorch", reason="the [executorch] extra is not installed")
    from efficientvim.quantize import quantize_xnnpack

    model = randomize_(efficientvim.create_model("efficientvim_m1", num_classes=10, **TINY)).eval()
    images = [torch.randn(3, 64, 64, generator=torch.Generator().manual_seed(i)) for i in range(5)]
    graph = torch.export.export(efficientvim.fuse(model, layout="channels_first"), (torch.zeros(3, 3, 64, 64),))
    quantized = quantize_xnnpack(graph.module(), images, batch=3)  # batches of 3: images 0-2, then 3, 4 and 0 again
    x = torch.stack(images[:3])
    with torch.no_grad():
        logits, expected = quantized(x), model(x)
    assert logits.shape == (3, 10) and torch.isfinite(logits).all()
    assert relative_error(expected, logits) < 0.5  # int8 of a random model: near the float logits, not equal
