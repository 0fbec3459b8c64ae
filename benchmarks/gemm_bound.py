"""How steady `bench`'s GEMM bound is from run to run: the old reading (the median of 5 timings of one 2048^3
product, the faster library) against the new one (`efficientvim.bench.gemm_bound`: the fastest repeat of
several shapes in each library), each in a fresh process, several times.

    python benchmarks/gemm_bound.py [--runs 5] [--threads 2] [--precision fp32,bf16]

Prints per precision the readings of each method and their spread (slowest-fastest, as % of the fastest).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

CHILD = """
import json, statistics, sys
import torch
from efficientvim.bench.gemm import _products, _seconds, gemm_bound
precision, threads = sys.argv[1], int(sys.argv[2])
torch.set_num_threads(threads)
old = 0.0
for product in _products(precision, "cpu", (2048, 2048, 2048)).values():
    for _ in range(2):
        product()
    old = max(old, 2 * 2048**3 / statistics.median(_seconds(product, "cpu") for _ in range(5)) / 1e9)
new = gemm_bound(precision, "cpu", threads)
print(json.dumps({"old": old, "new": new.gflops, "spread": new.spread, "shape": new.shape, "library": new.library}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", default="fp32,bf16")
    args = p.parse_args()
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    for precision in args.precision.split(","):
        runs = []
        for _ in range(args.runs):
            out = subprocess.run([sys.executable, "-c", CHILD, precision, str(args.threads)], env=env,
                                 capture_output=True, text=True, check=True).stdout
            runs.append(json.loads(out))
        for key, name in (("old", "one 2048^3 product, median of 5"), ("new", "gemm_bound, fastest repeat")):
            values = [r[key] for r in runs]
            spread = 100 * (max(values) - min(values)) / max(values)
            print(f"{precision} {name:32s} " + " ".join(f"{v:6.0f}" for v in values) +
                  f"  GFLOP/s; spread {spread:.1f}%")
        print(f"{precision} winning products: " + ", ".join(f"{r['shape']} {r['library']}" for r in runs))


if __name__ == "__main__":
    main()
