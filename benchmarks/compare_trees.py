"""Fused-model speed of this tree against another checkout of the package, in one process.

    git worktree add /tmp/old <commit>
    python benchmarks/compare_trees.py /tmp/old/src efficientvim_m2 --batch-size 32 --rounds 20

The other tree's package is imported under another name (its imports are relative), both fuse
the same weights, outputs are checked equal, and calls alternate so that machine noise hits both
alike: the figure to read is the median per-round ratio old/new (above 1: this tree is faster).
Bench runs in separate processes on a shared 2-core machine varied by up to 20% between runs;
this ratio varies by well under 1%.
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

import efficientvim as new


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("other_src", help="the other checkout's src/ folder")
    p.add_argument("model", nargs="?", default="efficientvim_m2")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="bf16: this tree fused with dtype=torch.bfloat16, the other fused then .to(torch.bfloat16)")
    args = p.parse_args()
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.precision]
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(Path(args.other_src) / "efficientvim", Path(tmp) / "efficientvim_other")
        sys.path.insert(0, tmp)
        old = importlib.import_module("efficientvim_other")
        torch.manual_seed(0)
        model = new.create_model(args.model).eval()
        other = old.create_model(args.model).eval()
        other.load_state_dict(model.state_dict())
        fused = {"new": new.fuse(model, dtype=dtype), "old": old.fuse(other).to(dtype)}
        size = model.pretrained_cfg["input_size"][-1]
        x = torch.randn(args.batch_size, 3, size, size).to(dtype)
        times: dict[str, list[float]] = {"new": [], "old": []}
        with torch.inference_mode():
            tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=0.05, atol=0.05)
            torch.testing.assert_close(fused["new"](x), fused["old"](x), **tol)
            for f in fused.values():
                for _ in range(3):
                    f(x)
            for r in range(args.rounds):
                for key in ("new", "old") if r % 2 else ("old", "new"):
                    start = time.perf_counter()
                    fused[key](x)
                    times[key].append(time.perf_counter() - start)
    ratio = statistics.median(o / n for o, n in zip(times["old"], times["new"]))
    print(f"{args.model} batch {args.batch_size}, {args.threads} threads, {args.precision} eager, "
          f"{args.rounds} rounds: "
          f"this tree {statistics.median(times['new']) * 1e3:.2f} ms, other {statistics.median(times['old']) * 1e3:.2f}"
          f" ms per call; median per-round ratio other/this {ratio:.3f}")


if __name__ == "__main__":
    main()
