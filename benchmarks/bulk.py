"""Bulk inference throughput: the local engine and Ray Data, eager (fused) and ONNX Runtime, 1 and 2 Ray nodes.

    unshare -n sh -c 'ip link set lo up && python benchmarks/bulk.py OUT'     # as root: Ray stays on loopback

Writes 1,000 photo-sized JPEGs (random crops of scikit-image's sample photos, resized to 800x600, quality 90)
into OUT/photos, then runs ``efficientvim predict OUT/photos --output ...`` (M1, its own 224 px preprocessing,
batch 32) in each configuration and prints one row each: engine, runtime, Ray nodes, wall seconds of the whole
command (start-up included), images/s as the job's summary line says (from the first file listed to the last row
written: Ray's start-up inside, the model's loading outside), and the ratio to the local eager run. Each Ray node
of the 2-node cluster is given one CPU (``ray start --num-cpus 1``); the 1-node runs get both CPUs of one node.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def photos(folder: Path, count: int) -> Path:
    import numpy as np
    from PIL import Image
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    sources = [Image.fromarray(getattr(data, n)()).convert("RGB") for n in ("astronaut", "coffee", "chelsea",
                                                                             "rocket", "hubble_deep_field")]
    rng = np.random.default_rng(0)
    for i in range(count):
        image = sources[i % len(sources)]
        w, h = image.size
        cw, ch = int(w * rng.uniform(0.5, 0.9)), int(h * rng.uniform(0.5, 0.9))
        x, y = int(rng.integers(0, w - cw)), int(rng.integers(0, h - ch))
        image.crop((x, y, x + cw, y + ch)).resize((800, 600)).save(folder / f"{i:04d}.jpg", quality=90)
    return folder


def run(out: Path, name: str, *extra: str) -> tuple[float, float]:
    target = out / name
    shutil.rmtree(target, ignore_errors=True)
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "efficientvim", "predict", str(out / "photos"), "--model",
                             "efficientvim_m1", "--output", str(target), "--batch-size", "32", "-q", *extra],
                            capture_output=True, text=True, env=env, timeout=1800)
    wall = time.monotonic() - start
    if result.returncode:
        raise SystemExit(f"{name} failed: {result.stderr[-2000:]}")
    rate = float(re.search(r"([\d.]+) images/s", result.stdout).group(1))
    return wall, rate


class Rows(list):
    """The rows, each also printed as it comes (a long run shows its progress)."""

    def append(self, row) -> None:
        super().append(row)
        print(*row, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--count", type=int, default=1000)
    args = parser.parse_args()
    if not any((args.out / "photos").glob("*.jpg")):
        photos(args.out / "photos", args.count)
    ray = Path(sys.executable).with_name("ray")
    rows = Rows()
    for runtime in ("eager", "onnxruntime"):
        rows.append(("local", runtime, "-", *run(args.out, f"local-{runtime}", "--runtime", runtime)))
        rows.append(("ray", runtime, "1 (2 CPUs)", *run(args.out, f"ray-{runtime}", "--runtime", runtime,
                                                          "--engine", "ray")))
    env = {**os.environ, "PYTHONPATH": str(SRC), "RAY_AUTH_MODE": "disabled"}
    for nodes in (1, 2):
        subprocess.run([ray, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", "6390", "--num-cpus", "1",
                        "--include-dashboard", "false"], env=env, check=True, capture_output=True)
        if nodes == 2:
            subprocess.run([ray, "start", "--address", "127.0.0.1:6390", "--node-ip-address", "127.0.0.1",
                            "--num-cpus", "1"], env=env, check=True, capture_output=True)
        try:
            os.environ["RAY_AUTH_MODE"] = "disabled"
            rows.append(("ray", "eager", f"{nodes} x 1 CPU", *run(args.out, f"ray-{nodes}-nodes", "--engine", "ray",
                                                                  "--address", "127.0.0.1:6390")))
        finally:
            subprocess.run([ray, "stop", "--force"], env=env, capture_output=True)
    base = rows[0][4]
    print(f"{args.count} JPEGs 800x600, efficientvim_m1 at 224 px, batch 32, fp32")
    print("| engine | runtime | Ray nodes | wall s (whole command) | images/s (job) | vs local eager |")
    print("|---|---|---|---|---|---|")
    for engine, runtime, nodes, wall, rate in rows:
        print(f"| {engine} | {runtime} | {nodes} | {wall:.1f} | {rate:.1f} | {rate / base:.2f}x |")


if __name__ == "__main__":
    main()
