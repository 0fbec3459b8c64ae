"""PT2E int8 (X86 Inductor quantizer, compiled) against the fused fp32 model in eager PyTorch.

    python benchmarks/pt2e_int8.py efficientvim_m1 efficientvim_m2 efficientvim_m4

Per model: ``efficientvim.quantize.quantize_pt2e`` calibrated on 32 digit images (the speed does not depend
on them), then batch 32 (15 rounds) and batch 1 (60 rounds) at the model's size, the two timed alternately
in one process after one untimed call each; medians, 2 threads.
"""

from __future__ import annotations

import statistics
import sys
import time
import warnings

import torch

import efficientvim as ev
from efficientvim.quantize import quantize_pt2e


def main(names: list[str]) -> None:
    warnings.simplefilter("ignore")
    torch.set_num_threads(2)
    for name in names:
        model = ev.create_model(name).eval()
        size = model.pretrained_cfg["input_size"][-1]
        runs = {"fp32": ev.fuse(model), "int8": quantize_pt2e(model, count=32)}
        for batch, rounds in ((32, 15), (1, 60)):
            x = torch.randn(batch, 3, size, size)
            times: dict[str, list[float]] = {k: [] for k in runs}
            with torch.inference_mode():
                for run in runs.values():
                    run(x)  # compiles this shape
                for _ in range(rounds):
                    for key, run in runs.items():
                        start = time.perf_counter()
                        run(x)
                        times[key].append(time.perf_counter() - start)
            fp32, int8 = (statistics.median(times[k]) for k in ("fp32", "int8"))
            print(f"{name} batch {batch}: fused fp32 {1000 * fp32:.2f} ms, PT2E int8 {1000 * int8:.2f} ms, "
                  f"int8/fp32 speed {fp32 / int8:.2f}x", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or ["efficientvim_m2"])
