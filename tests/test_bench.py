"""``efficientvim bench`` plumbing: names, errors, result files and plots (nothing here is timed)."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from efficientvim.bench import (
    Result,
    build_model,
    model_family,
    native_resolution,
    plot_resolution_scaling,
    plot_speed_accuracy,
    write_results,
)
from efficientvim.cli import main
from efficientvim.deploy import FusedEfficientViM


def _result(model: str, resolution: int, ms_per_image: float, batch: int = 32) -> Result:
    return Result(model, "eager", "cpu", "fp32", 2, batch, resolution, ms_per_image * batch, 1e3 / ms_per_image,
                  ms_per_image, 12.5, 3, None, [ms_per_image * batch] * 3)  # fmt: skip


def test_benchmark_names_map_to_families_and_training_resolutions():
    assert model_family("timm:shvit_s2") == "shvit_s2"
    assert model_family("efficientvim_m4+fuse") == "efficientvim_m4"
    assert native_resolution("efficientvim_m4+fuse") == 256
    assert native_resolution("timm:efficientvim_m4") == 256
    assert native_resolution("efficientvim_m2") == 224


def test_fused_benchmark_names_build_the_fused_graph_for_each_runtime():
    eager = build_model("efficientvim_m1+fuse")
    onnx = build_model("efficientvim_m1+fuse", runtime="onnxruntime")
    assert isinstance(eager, FusedEfficientViM) and not eager.channels_first
    assert onnx.channels_first


def test_results_are_written_as_csv_and_json_with_the_run_metadata(tmp_path):
    results = [_result("efficientvim_m1+fuse", 224, 10.0), _result("timm:shvit_s1", 224, 12.0)]
    paths = write_results(results, tmp_path / "out", {"machine": "test cpu", "threads": 2})
    with open(paths["csv"]) as f:
        rows = list(csv.DictReader(f))
    assert [r["model"] for r in rows] == ["efficientvim_m1+fuse", "timm:shvit_s1"]
    assert float(rows[0]["images_per_s"]) == pytest.approx(100.0)
    data = json.loads(paths["json"].read_text())
    assert data["meta"]["machine"] == "test cpu"
    assert data["results"][1]["times_ms"] == [384.0] * 3


def test_plots_are_written_as_png(tmp_path):
    results = [
        _result(m, res, t * (res / 224) ** 2)
        for m, t in (("efficientvim_m2+fuse", 10.0), ("efficientvim_m4+fuse", 20.0), ("timm:shvit_s2", 11.0))
        for res in (224, 512)
    ]
    for plot, name in ((plot_speed_accuracy, "acc.png"), (plot_resolution_scaling, "scaling.png")):
        path = plot(results, tmp_path / name, "test")
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resolution_plot_needs_more_than_one_resolution(tmp_path):
    assert plot_resolution_scaling([_result("efficientvim_m1+fuse", 224, 10.0)], tmp_path / "x.png", "t") is None


@pytest.mark.parametrize(
    "argv, message",
    [
        (["bench", "--models", "efficientvim_m9+fuse"], "unknown benchmark model 'efficientvim_m9+fuse'"),
        (["bench", "--models", "timm:no_such_net"], "unknown benchmark model 'timm:no_such_net'"),
        (["bench", "--models", "efficientvim_m1", "--runtimes", "tensorrt"], "unknown runtime 'tensorrt'"),
        pytest.param(["bench", "--models", "efficientvim_m1", "--device", "cuda:0"], "no GPU",
                     marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")),
        (["bench", "--models", "efficientvim_m1", "--repeats", "0"], "--repeats: must be at least 1, got 0"),
    ],
)
def test_bench_cli_reports_user_mistakes_in_one_line_with_exit_code_2(tmp_path, capsys, argv, message):
    code = main([*argv, "-o", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("efficientvim bench: error: ") and message in err
    assert err.count("\n") == 1


def test_bench_dense_times_trunk_and_fpn_through_the_same_runner(tmp_path, capsys):
    """Dense latency goes through run_benchmark: interleaved, our fused and timm names too, one writer."""
    argv = ["bench", "--task", "dense", "--models", "efficientvim_m1,efficientvim_m1+fuse,timm:efficientvim_m1",
            "--resolutions", "64,96", "--batch-size", "1", "--repeats", "1", "--warmup", "0", "--threads", "1",
            "--no-progress", "-o", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["meta"]["task"] == "dense" and data["meta"]["fpn_channels"] == 256
    rows = [(r["model"], r["resolution"], r["error"]) for r in data["results"]]
    assert rows == [(m, res, None) for res in (64, 96) for m in
                    ("efficientvim_m1", "efficientvim_m1+fuse", "timm:efficientvim_m1")]
    assert all(r["vs_timm"] for r in data["results"] if not r["model"].startswith("timm:"))
    assert not (tmp_path / "speed_accuracy.png").exists()  # published top-1 says nothing of dense latency


def test_dense_benchmark_model_returns_the_fpn_levels_of_fused_and_unfused_trunks():
    from efficientvim.bench import build_model

    x = torch.randn(1, 3, 128, 128)
    models = {}
    for name, fpn in (("efficientvim_m1", 256), ("efficientvim_m1+fuse", 256), ("efficientvim_m1", None),
                      ("efficientvim_m1+fuse", None)):
        torch.manual_seed(0)  # the same random weights for the fused and the unfused build
        models[name, fpn] = build_model(name, task="dense", fpn_channels=fpn)
    with torch.no_grad():
        out = {key: model(x) for key, model in models.items()}
    assert [tuple(m.shape) for m in out["efficientvim_m1", 256]] == [
        (1, 256, 16, 16), (1, 256, 8, 8), (1, 256, 4, 4), (1, 256, 2, 2)]
    assert [m.shape[1] for m in out["efficientvim_m1", None]] == [64, 128, 192, 320]
    for fpn in (256, None):  # the fused trunk (and the FPN over it) computes what the unfused one does
        for plain, fused in zip(out["efficientvim_m1", fpn], out["efficientvim_m1+fuse", fpn]):
            torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-4)


def test_the_ratio_to_timm_agrees_with_the_rows_own_figures():
    """A noisy machine: per-round ratios of 0.5x, 2x and 2.5x have a median of 2x, while the medians say timm's
    model is faster (10 vs 12 s). The ratio is the medians' (0.83x), with the per-round quartiles as its spread."""
    from efficientvim.bench import median_ratio, ratio_spread

    timm_times, ours = [10.0, 10.0, 30.0], [20.0, 5.0, 12.0]
    assert median_ratio(timm_times, ours) == pytest.approx(10 / 12)
    low, high = ratio_spread(timm_times, ours)
    assert low < 10 / 12 < high and low == pytest.approx(0.5) and high == pytest.approx(2.5)


def test_bench_prints_the_ratio_of_its_img_s_columns_and_warns_when_rounds_disagree(tmp_path, capsys, monkeypatch):
    import efficientvim.bench

    argv = ["bench", "--models", "efficientvim_m1+fuse,timm:efficientvim_m1", "--resolutions", "64", "--batch-size",
            "1", "--repeats", "3", "--warmup", "1", "--threads", "1", "--no-progress", "-o", str(tmp_path)]
    monkeypatch.setattr(efficientvim.bench, "UNRELIABLE_SPREAD", -1.0)  # every spread counts as too wide
    assert main(argv) == 0
    captured = capsys.readouterr()
    rows = {r["model"]: r for r in json.loads((tmp_path / "results.json").read_text())["results"]}
    ours, theirs = rows["efficientvim_m1+fuse"], rows["timm:efficientvim_m1"]
    assert ours["vs_timm"] == pytest.approx(ours["images_per_s"] / theirs["images_per_s"])
    line = next(line for line in captured.out.splitlines() if line.startswith("efficientvim_m1+fuse"))
    low, high = ours["vs_timm_spread"]
    assert f"{ours['vs_timm']:.2f}x ({low:.2f}-{high:.2f})" in line
    assert captured.err.startswith("warning: the rounds disagree on the ratio to timm for efficientvim_m1+fuse ")
