"""``efficientvim bench``: throughput, latency and memory of EfficientViM and its timm peers, with plots."""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

from .common import non_negative_int, positive_int, writable_folder


def _csv(kind):
    def parse(text: str) -> list:
        try:
            return [kind(v) for v in text.split(",") if v]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}") from None

    return parse


def _resolution(text: str) -> int | str:
    return text if text == "native" else int(text)


HELP = "benchmark inference speed against timm peers (CSV, JSON, plots)"
DESCRIPTION = (
    "Throughput (batch N) and latency (batch 1): warm-up, then the median of interleaved timed calls. "
    "Models: efficientvim_mX, efficientvim_mX+fuse, timm:NAME (pretrained=False, reparameterised)."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", choices=("classification", "dense"), default="classification",
                   help="classification, or dense: trunk levels (strides 8-64) + FPN as in the paper's dense "
                   "protocol (512x512 unless --resolutions says otherwise); timm: names take all their levels")
    p.add_argument("--fpn-channels", type=non_negative_int, default=256,
                   help="dense: the FPN's width (default 256); 0 times the trunk alone")
    p.add_argument("--models", type=_csv(str), help="comma-separated model names (default: EfficientViM M1-M4, "
                   "fused and timm's, and the timm peers)")
    p.add_argument("--runtimes", type=_csv(str), default=["eager"],
                   help="comma-separated: eager, compile, cudagraph (CUDA: the eager model recorded in a CUDA graph), "
                   "onnxruntime, openvino, executorch, litert (the last four time the exported fused graph on CPU; "
                   "executorch and litert write one file per input shape)")
    p.add_argument("--resolutions", type=_csv(_resolution), default=["native"],
                   help="comma-separated sizes, or 'native' (each model's training size; M4: 256)")
    p.add_argument("--batch-size", type=positive_int, default=32, help="batch for throughput")
    p.add_argument("--no-latency", action="store_true", help="skip the batch-1 latency runs")
    p.add_argument("--threads", type=positive_int, default=2, help="CPU threads (PyTorch intra-op and ONNX Runtime)")
    p.add_argument("--device",
                   help="cpu, or cuda; default: cuda when a GPU is present")
    p.add_argument("--precision", type=_csv(str), default=None,
                   help="comma-separated: fp32, bf16, fp16 (eager, compile; openvino: fp32, bf16), int8 (onnxruntime, "
                   "openvino: static QDQ; executorch, litert: PT2E) (default: fp32 on CPU, fp16 on CUDA); fused "
                   "models are fused "
                   "in it, the others converted (CPU) or autocast (CUDA); the GEMM bound of each float precision "
                   "is measured")
    p.add_argument("--warmup", type=non_negative_int, default=3, help="untimed calls per model and setting")
    p.add_argument("--repeats", type=positive_int, default=10,
                   help="timed calls per model and setting (median reported)")
    p.add_argument("-o", "--output-dir", default="bench-results", help="folder for results.csv/json and plots")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    writable_folder(args.output_dir)
    import torch

    from ..bench import DEFAULT_MODELS, DENSE_DEFAULT_MODELS

    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.models is None:
        args.models = list(DEFAULT_MODELS if args.task == "classification" else DENSE_DEFAULT_MODELS)
    from ..bench import (
        PRECISIONS,
        UNRELIABLE_SPREAD,
        BenchmarkError,
        gemm_bound,
        machine_description,
        plot_resolution_scaling,
        plot_speed_accuracy,
        run_benchmark,
        write_results,
    )
    from ..kernels import native_precision

    precisions = args.precision or (["fp16"] if args.device.startswith("cuda") else ["fp32"])
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown:
        raise BenchmarkError(f"--precision {unknown[0]}: choose from {', '.join(PRECISIONS)}")
    batches = [args.batch_size] + ([] if args.no_latency or args.batch_size == 1 else [1])
    results = run_benchmark(
        args.models, args.runtimes, args.resolutions, batches, args.threads, args.device, args.warmup,
        args.repeats, progress=not args.no_progress, task=args.task, fpn_channels=args.fpn_channels or None,
        precisions=precisions,
    )  # fmt: skip
    machine = machine_description(args.device)
    bounds = {p: gemm_bound(p, args.device, args.threads) for p in precisions
              if p != "int8" and native_precision(PRECISIONS[p], args.device) is None}
    meta = dict(machine=machine, device=args.device, threads=args.threads, torch=torch.__version__,
                python=platform.python_version(), warmup=args.warmup, repeats=args.repeats, task=args.task,
                fpn_channels=args.fpn_channels if args.task == "dense" else None,
                gemm_gflops={p: round(b.gflops, 1) for p, b in bounds.items()},
                gemm_bound={p: dict(gflops=round(b.gflops, 1), spread=[round(v, 1) for v in b.spread],
                                    shape=list(b.shape), library=b.library) for p, b in bounds.items()})  # fmt: skip
    out = Path(args.output_dir)
    paths = write_results(results, out, meta)
    for precision in precisions:  # plots per precision
        rows = [r for r in results if r.precision == precision]
        title = f"{machine}, {args.threads} threads, {precision}"
        suffix = f"_{precision}" if len(precisions) > 1 else ""
        plots = ((plot_resolution_scaling, f"resolution_scaling{suffix}.png"),)
        if args.task == "classification":  # published top-1 against classifier speed
            plots = ((plot_speed_accuracy, f"speed_accuracy{suffix}.png"), *plots)
        for plot, name in plots:
            if plot(rows, out / name, title) is not None:
                paths[name] = out / name
    print(f"{'model':32s} {'runtime':12s} {'prec':>5s} {'res':>5s} {'batch':>5s} {'ms/call':>9s} {'img/s':>8s} "
          f"{'vs timm (rounds)':>17s} {'GFLOP/s':>8s} {'of bound':>8s}")
    unreliable = []
    for r in results:
        if r.error:
            print(f"{r.model:32s} {r.runtime:12s} {r.precision:>5s} failed: {r.error}")
            continue
        ratio = ""
        if r.vs_timm:  # the ratio of the medians, and the quartiles of the per-round ratios
            low, high = r.vs_timm_spread
            ratio = f"{r.vs_timm:.2f}x ({low:.2f}-{high:.2f})"
            if (high - low) > UNRELIABLE_SPREAD * r.vs_timm:
                unreliable.append(r.model)
        rate = f"{r.gflops:.0f}" if r.gflops else ""
        share = f"{100 * r.gflops / bounds[r.precision].gflops:.0f}%" if r.gflops and r.precision in bounds else ""
        print(f"{r.model:32s} {r.runtime:12s} {r.precision:>5s} {r.resolution:5d} {r.batch_size:5d} "
              f"{r.median_ms:9.2f} {r.images_per_s:8.1f} {ratio:>17s} {rate:>8s} {share:>8s}")  # fmt: skip
    if unreliable:
        print(f"warning: the rounds disagree on the ratio to timm for {', '.join(dict.fromkeys(unreliable))} "
              f"(quartiles more than {UNRELIABLE_SPREAD:.0%} apart): the machine was busy; rerun with more --repeats "
              "on an idle machine before quoting them", file=sys.stderr)
    if bounds:
        rates = "; ".join(f"{p} {b.describe()}" for p, b in bounds.items())
        print(f"GEMM bound (the fastest repeat of several matrix products in each library): {rates}")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0
