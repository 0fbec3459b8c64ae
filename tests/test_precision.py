"""The fused path in low precision: autocast (CPU here; the same code runs CUDA's), bf16/fp16 fusing, fallbacks.

Tolerance: a low-precision model cannot match float32 closer than the unfused model does in that same
precision, so each check bounds the fused error by twice the unfused model's own error against float32
(bfloat16 keeps 8 mantissa bits, float16 11: errors of about 2^-8 and 2^-11 per operation, summed over
the depth). Nothing here is timed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

import efficientvim as ev
from conftest import randomize_, relative_error
from efficientvim.bench import PRECISIONS, run_benchmark
from efficientvim.cli import main

TINY = dict(embed_dim=(32, 48, 64), depths=(1, 2, 1), state_dim=(8, 6, 4))
X = torch.randn(3, 3, 96, 160, generator=torch.Generator().manual_seed(0))  # non-square


@pytest.fixture(scope="module")
def model():
    return randomize_(ev.create_model("efficientvim_m1_dist", num_classes=10, **TINY)).eval()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["channels_last", "channels_first"])
def test_fused_models_run_under_autocast_as_accurately_as_the_model_itself(model, dtype, layout):
    """The in-place GEMM sums used to raise under autocast (float32 stream, low-precision operands)."""
    fused = ev.fuse(model, layout=layout)
    with torch.no_grad():
        reference = model(X)
        for batch in (3, 1):  # batch 1 takes the pre-packed kernels in float32: they must step aside
            with torch.autocast("cpu", dtype):
                own, got = model(X[:batch]), fused(X[:batch])
            assert got.dtype == dtype
            bound = 2 * relative_error(reference[:batch], own.float())
            assert relative_error(reference[:batch], got.float()) <= bound, (batch, bound)


def test_fusing_in_bfloat16_takes_float32_images_and_is_as_accurate_as_the_model_in_bfloat16(model):
    if not ev.kernels.BF16_NATIVE:
        pytest.skip("this CPU has no native bfloat16: fuse falls back to float32 (tested below)")
    fused = ev.fuse(model, dtype=torch.bfloat16)
    assert {p.dtype for p in fused.parameters()} == {torch.bfloat16}
    features = ev.fuse(ev.create_model("efficientvim_m1", features_only=True, **TINY).eval(), dtype=torch.bfloat16)
    with torch.no_grad():
        reference, own = model(X), model.to(torch.bfloat16)(X.to(torch.bfloat16))
        model.float()
        for batch in (3, 1):
            got = fused(X[:batch])  # float32 images in
            assert got.dtype == torch.bfloat16
            assert relative_error(reference[:batch], got.float()) <= 2 * relative_error(reference, own.float())
        assert [m.dtype for m in features(X)] == [torch.bfloat16] * 3


def test_a_float16_copy_computes_correctly_on_cpu_too(model):
    """float16 on a CPU without native support only through .to(): correct, if slow (CUDA's dtype)."""
    fused = ev.fuse(model).to(torch.float16)
    with torch.no_grad():
        reference = model(X)
        own = model.to(torch.float16)(X.half())
        model.float()
        got = fused(X)
    assert got.dtype == torch.float16
    assert relative_error(reference, got.float()) <= 2 * relative_error(reference, own.float())


def test_without_native_support_fuse_says_so_and_stays_float32(model, monkeypatch):
    def lacking_bf16(dtype, device):
        return "this CPU has no native bfloat16 (x)" if dtype == torch.bfloat16 else None

    monkeypatch.setattr(ev.deploy.network, "native_precision", lacking_bf16)  # where fuse() asks
    with pytest.warns(UserWarning, match=r"this CPU has no native bfloat16 \(x\): fusing in float32, which runs "
                      r"faster here"):
        fused = ev.fuse(model, dtype=torch.bfloat16)
    assert {p.dtype for p in fused.parameters()} == {torch.float32}
    with torch.no_grad():
        torch.testing.assert_close(fused(X), ev.fuse(model)(X))


@pytest.mark.parametrize("library", ["mkl", "onednn"])
def test_both_gemm_libraries_compute_the_fused_model_exactly(model, library, monkeypatch):
    """float32 projections run on MKL (Intel) or oneDNN (AMD): both paths, whichever CPU runs the tests."""
    monkeypatch.setattr(ev.kernels, "GEMM_LIBRARY", library)
    fused = ev.fuse(model)
    many = torch.randn(6, 3, 96, 160, generator=torch.Generator().manual_seed(1))  # the stem's NCHW path on oneDNN
    assert ev.kernels.stem_reads_nchw(many) == (library == "onednn" and ev.kernels.MKLDNN_PACKED)
    assert not ev.kernels.stem_reads_nchw(X[:1])
    with torch.no_grad():
        for x in (X, X[:1], many):  # batch 1: the pre-packed small-GEMM path
            reference = model(x)
            assert relative_error(reference, fused(x)) <= 1e-4
            with torch.autocast("cpu", torch.bfloat16):  # neither library's float32 kernels under autocast
                assert fused(x).dtype == torch.bfloat16


def test_gemm_library_follows_the_cpu_vendor_unless_told():
    code = "import efficientvim.kernels as k; print(k.GEMM_LIBRARY)"
    for choice in ("mkl", "onednn"):
        env = {**os.environ, "EFFICIENTVIM_GEMM": choice}
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert done.stdout.strip() == choice
    expected = "onednn" if ev.kernels.cpu_vendor() == "AuthenticAMD" and ev.kernels.MKLDNN_PACKED else "mkl"
    env = {k: v for k, v in os.environ.items() if k != "EFFICIENTVIM_GEMM"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == expected


def test_native_precision_names_what_the_cpu_lacks():
    from efficientvim.kernels import BF16_NATIVE, FP16_NATIVE, native_precision

    assert native_precision(torch.float32, "cpu") is None
    assert (native_precision(torch.bfloat16, "cpu") is None) == BF16_NATIVE
    why = native_precision(torch.float16, "cpu")
    assert (why is None) == FP16_NATIVE
    if why:
        assert why == "this CPU has no native float16 (AVX512-FP16 or AMX-FP16)"


def test_bench_times_each_precision_or_says_why_not(tmp_path, capsys):
    argv = ["bench", "--models", "efficientvim_m1+fuse,efficientvim_m1", "--precision", "fp32,bf16,fp16",
            "--resolutions", "64", "--batch-size", "1", "--repeats", "1", "--warmup", "0", "--threads", "1",
            "--no-progress", "-o", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    data = json.loads((tmp_path / "results.json").read_text())
    rows = {(r["model"], r["precision"]): r for r in data["results"]}
    assert set(rows) == {(m, p) for m in ("efficientvim_m1+fuse", "efficientvim_m1") for p in ("fp32", "bf16", "fp16")}
    for (_, precision), row in rows.items():
        why = ev.kernels.native_precision(PRECISIONS[precision], "cpu")
        assert (row["error"] is None) == (why is None)
        if why:
            assert row["error"] == f"BenchmarkError: {why}: {precision} would run emulated, slower than fp32"
        else:
            assert row["gflops"] > 0 and precision in data["meta"]["gemm_gflops"]
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if x.startswith("GEMM bound"))
    bound = data["meta"]["gemm_bound"]["fp32"]
    low, high = bound["spread"]
    assert low <= high == bound["gflops"] == data["meta"]["gemm_gflops"]["fp32"]
    m, k, n = bound["shape"]
    assert line.startswith("GEMM bound (the fastest repeat of several matrix products in each library): fp32 "
                           f"{high:.0f} GFLOP/s ({m}x{k} @ {k}x{n} in {bound['library']}; its repeats {low:.0f}-")
    rows = run_benchmark(["efficientvim_m1+fuse"], ["onnxruntime"], resolutions=[64], batch_sizes=[1], threads=1,
                         warmup=0, repeats=1, precisions=["bf16", "int8"], progress=False)
    assert rows[0].error == "BenchmarkError: the onnxruntime runtime is timed in fp32, int8, not bf16"
    assert rows[1].precision == "int8" and rows[1].error is None and rows[1].images_per_s > 0
    if ev.kernels.BF16_NATIVE and importlib.util.find_spec("openvino"):
        rows = run_benchmark(["efficientvim_m1+fuse"], ["openvino"], resolutions=[64], batch_sizes=[1], threads=1,
                             warmup=0, repeats=1, precisions=["fp32", "bf16", "int8", "fp16"], progress=False)
        assert [(r.precision, r.error) for r in rows[:3]] == [("fp32", None), ("bf16", None), ("int8", None)]
        assert rows[3].error.startswith("BenchmarkError: the openvino runtime is timed in fp32, bf16, int8")
    assert main([*argv[:5], "--precision", "int4", "-o", str(tmp_path)]) == 2
    assert "--precision int4: choose from fp32, bf16, fp16, int8" in capsys.readouterr().err
