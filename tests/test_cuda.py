"""The CUDA paths on a GPU: the fused model in float32, float16 and bfloat16 (fused in that dtype and under
autocast), against the float32 model on CPU; the benchmark's cudagraph and channels-last runners.

Skipped without a GPU (CI has none): every code path these take except the device itself is tested on CPU
(test_precision.py runs autocast and float16 copies of the fused model there). Tolerance as there: twice the
unfused model's own error in that setting on this GPU, which includes cuDNN's TF32 convolutions in float32.
"""

from __future__ import annotations

import copy

import pytest
import torch

import efficientvim as ev
from conftest import randomize_, relative_error
from efficientvim.bench import CUDA_RUNTIMES, BenchmarkError, run_benchmark
from efficientvim.bench.runners import Runner

TINY = dict(embed_dim=(32, 48, 64), depths=(1, 2, 1), state_dim=(8, 6, 4))
X = torch.randn(4, 3, 96, 160, generator=torch.Generator().manual_seed(0))  # non-square
LOW = [torch.float16, torch.bfloat16]

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the CPU tests cover its code paths)")


@pytest.fixture(scope="module")
def model():
    return randomize_(ev.create_model("efficientvim_m1_dist", num_classes=10, **TINY)).eval()


@pytest.fixture(scope="module")
def reference(model):
    with torch.no_grad():
        return model(X)


def _own_error(model, reference, dtype=None, autocast=False) -> float:
    """The unfused model's error against float32 on CPU, on the GPU in ``dtype`` (converted or autocast)."""
    gpu = copy.deepcopy(model).to("cuda")
    x = X.cuda()
    with torch.no_grad():
        if autocast:
            with torch.autocast("cuda", dtype):
                out = gpu(x)
        elif dtype is not None:
            out = gpu.to(dtype)(x.to(dtype))
        else:
            out = gpu(x)
    return relative_error(reference, out.float().cpu())


@cuda
@pytest.mark.parametrize("layout", ["channels_last", "channels_first"])
def test_fused_float32_on_the_gpu_matches_the_cpu_model(model, reference, layout):
    fused = ev.fuse(copy.deepcopy(model).to("cuda"), layout=layout)
    with torch.no_grad():
        got = fused(X.cuda()).cpu()
    assert relative_error(reference, got) <= max(2 * _own_error(model, reference), 1e-5)


@cuda
@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("layout", ["channels_last", "channels_first"])
def test_fused_models_run_under_cuda_autocast(model, reference, dtype, layout):
    """The benchmark's and the peers' protocol: a float32 model under autocast."""
    fused = ev.fuse(copy.deepcopy(model).to("cuda"), layout=layout)
    with torch.no_grad(), torch.autocast("cuda", dtype):
        got = fused(X.cuda())
    assert got.dtype == dtype
    assert relative_error(reference, got.float().cpu()) <= 2 * _own_error(model, reference, dtype, autocast=True)


@cuda
@pytest.mark.parametrize("dtype", LOW)
def test_fusing_in_low_precision_on_the_gpu(model, reference, dtype):
    """fuse(dtype=...) on a GPU: that dtype without a fallback (native on CUDA), float32 images in."""
    fused = ev.fuse(copy.deepcopy(model).to("cuda"), dtype=dtype)
    assert {p.dtype for p in fused.parameters()} == {dtype}
    with torch.no_grad():
        got = fused(X.cuda())
    assert got.dtype == dtype
    assert relative_error(reference, got.float().cpu()) <= 2 * _own_error(model, reference, dtype)


@cuda
@pytest.mark.parametrize("name", ["efficientvim_m1+fuse", "timm:efficientvim_m1"])
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_the_cuda_graph_runner_replays_what_eager_computes(tmp_path, name, precision):
    runners = {}
    for runtime in ("eager", "cudagraph"):
        torch.manual_seed(0)  # the same random weights in both
        runners[runtime] = Runner(name, runtime, "cuda", 1, tmp_path, "classification", None, precision)
    eager, graph = runners["eager"], runners["cudagraph"]
    x = eager.input(8, 224)
    if eager.memory_format == torch.channels_last:
        assert x.is_contiguous(memory_format=torch.channels_last)
    graph.prepare(x)
    with torch.inference_mode(), eager._autocast():
        want = eager.run(x)
        got = graph.run(x).clone()
        graph.run(torch.zeros_like(x))  # a replay on new data computes that data, not the recorded one
        again = graph.run(x)
    torch.testing.assert_close(got, want)  # the dtype's default tolerance (kernels may differ in a graph)
    torch.testing.assert_close(again, want)
    assert not torch.allclose(graph.run(torch.zeros_like(x)), want)


@cuda
def test_bench_on_cuda_times_every_gpu_runtime(tmp_path):
    results = run_benchmark(["efficientvim_m1+fuse", "timm:efficientvim_m1"], ["eager", "cudagraph"], [128], [4],
                            device="cuda", warmup=1, repeats=2, progress=False, precisions=["fp16", "bf16"])
    assert [r.error for r in results] == [None] * 8
    assert all(r.images_per_s > 0 and r.vs_timm for r in results if r.model.endswith("+fuse"))


def test_the_cuda_graph_runtime_asks_for_a_gpu():
    with pytest.raises(BenchmarkError, match=f"the {CUDA_RUNTIMES[0]} runtime needs a GPU: use --device cuda"):
        run_benchmark(["efficientvim_m1+fuse"], ["cudagraph"], device="cpu", progress=False)
