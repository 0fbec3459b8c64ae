"""Turn ``efficientvim bench`` results.json files into the Markdown tables of docs/benchmarks.md.

    python benchmarks/summarize.py RESULTS.json [MORE.json ...]
    python benchmarks/summarize.py --matrix RESULTS.json [MORE.json ...]   # ours / SHViT per runtime, one table

Prints one table per (precision, runtime, batch size, resolution): measured figures, the ratio against timm's
reparameterised EfficientViM of the same variant (median of interleaved per-round ratios), and
for EfficientViM the ratio against the SHViT of the same size (S1 for M1 ... S4 for M4), also a
median of per-round ratios.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict

from efficientvim.bench import median_ratio, model_family

SHVIT_PEER = {f"efficientvim_m{i}": f"timm:shvit_s{i}" for i in range(1, 5)}


def summarize(paths: list[str]) -> str:
    out = []
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        meta = data["meta"]
        out.append(f"Source: `{path}` — {meta['machine']}, {meta['threads']} threads, torch {meta['torch']}, "
                   f"warm-up {meta['warmup']}, median of {meta['repeats']} interleaved calls.\n")
        groups = defaultdict(list)
        for r in data["results"]:
            key = (r["precision"], r["runtime"], r["batch_size"], r["resolution"] if r["batch_size"] else 0)
            groups[key].append(r)  # failed rows (batch 0) gathered per precision and runtime
        for (_, runtime, batch, _), rows in sorted(groups.items(), key=lambda kv: (*kv[0][:2], -kv[0][2], kv[0][3])):
            if not batch:
                for r in rows:
                    out.append(f"- {r['model']} ({runtime}) failed: {r['error']}")
                continue
            times = {r["model"]: r["times_ms"] for r in rows if not r["error"]}
            out.append(f"\n**{runtime}, batch {batch}, {rows[0]['resolution']}px** "
                       f"({rows[0]['precision']}, {rows[0]['device']})\n")
            out.append("| model | ms / call | images / s | ms / image | peak MB | vs timm EfficientViM | vs SHViT |")
            out.append("|---|---:|---:|---:|---:|---:|---:|")
            for r in rows:
                if r["error"]:
                    out.append(f"| {r['model']} | failed: {r['error'][:60]} | | | | | |")
                    continue
                vs_timm = f"{r['vs_timm']:.2f}x" if r["vs_timm"] else ""
                peer = SHVIT_PEER.get(model_family(r["model"]))
                vs_shvit = f"{median_ratio(times[peer], times[r['model']]):.2f}x" if peer in times else ""
                mem = f"{r['peak_memory_mb']:.0f}" if r["peak_memory_mb"] is not None else "–"
                out.append(f"| {r['model']} | {r['median_ms']:.1f} | {r['images_per_s']:.1f} | "
                           f"{r['ms_per_image']:.2f} | {mem} | {vs_timm} | {vs_shvit} |")
        out.append("")
    return "\n".join(out)


def matrix(paths: list[str], target: float = 1.0) -> str:
    """One row per (runtime, precision, batch): each fused EfficientViM's speed over its SHViT's (S1 for M1 ...), the
    ratio of the two medians, with both images/s; a cell under ``target`` is bold (a gap)."""
    rows: dict[tuple, dict[str, dict]] = defaultdict(dict)
    machines = set()
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        machines.add(f"{data['meta']['machine']}, {data['meta']['threads']} threads")
        for r in data["results"]:
            if not r["error"]:
                rows[r["runtime"], r["precision"], r["batch_size"]][r["model"].removesuffix("+fuse")] = r
    out = [f"Sources: {', '.join(f'`{p}`' for p in paths)} ({'; '.join(sorted(machines))}). Each cell: EfficientViM's "
           "images/s over SHViT's of the same size (ratio of medians), then both images/s; **bold**: under "
           f"{target:.2f}x.\n",
           "| runtime | precision | batch | M1 / S1 | M2 / S2 | M3 / S3 | M4 / S4 |", "|---|---|---:|---|---|---|---|"]
    for (runtime, precision, batch), models in sorted(rows.items(), key=lambda kv: (kv[0][0], kv[0][1], -kv[0][2])):
        cells = []
        for ours, peer in SHVIT_PEER.items():
            if ours not in models or peer not in models:
                cells.append("failed" if ours in models or peer in models else "")
                continue
            a, b = models[ours]["images_per_s"], models[peer]["images_per_s"]
            ratio = f"{a / b:.2f}x"
            cells.append(f"{f'**{ratio}**' if a / b < target else ratio} ({a:.0f} / {b:.0f})")
        out.append(f"| {runtime} | {precision} | {batch} | " + " | ".join(cells) + " |")
    return "\n".join(out)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--matrix"]:
        print(matrix(sys.argv[2:]))
    else:
        print(summarize(sys.argv[1:]))
