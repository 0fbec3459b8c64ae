#!/usr/bin/env bash
# The CPU runs behind docs/benchmarks.md. Each command times its models interleaved (one call of
# each model per round), so compare figures within one run. Results land in bench-results/<run>/.
set -euo pipefail
OUT=${OUT:-bench-results}
THREADS=${THREADS:-2}
OURS="efficientvim_m1+fuse,efficientvim_m2+fuse,efficientvim_m3+fuse,efficientvim_m4+fuse"
TIMM="timm:efficientvim_m1,timm:efficientvim_m2,timm:efficientvim_m3,timm:efficientvim_m4"
SHVIT="timm:shvit_s1,timm:shvit_s2,timm:shvit_s3,timm:shvit_s4"

# 1. eager PyTorch, batch 32 throughput and batch 1 latency, every model at its training resolution
efficientvim bench --runtimes eager --batch-size 32 --threads "$THREADS" --repeats 10 --warmup 3 -o "$OUT/eager"

# 2. ONNX Runtime (our fused graph vs timm's exported model and SHViT)
efficientvim bench --runtimes onnxruntime --models "$OURS,$TIMM,$SHVIT" --batch-size 32 --threads "$THREADS" \
  --repeats 10 --warmup 3 -o "$OUT/onnxruntime"

# 3. torch.compile (compilation happens during warm-up)
efficientvim bench --runtimes compile --models "efficientvim_m2+fuse,timm:efficientvim_m2" \
  --batch-size 32 --threads "$THREADS" --repeats 5 --warmup 2 -o "$OUT/compile"

# 4. resolution scaling, batch 1, against SHViT (attention on tokens)
efficientvim bench --runtimes eager \
  --models "efficientvim_m2+fuse,timm:efficientvim_m2,timm:shvit_s2,efficientvim_m4+fuse,timm:efficientvim_m4,timm:shvit_s4" \
  --resolutions 224,384,512,768,1024 --batch-size 1 --no-latency --threads "$THREADS" --repeats 5 --warmup 1 \
  -o "$OUT/resolution"

for run in eager onnxruntime compile resolution; do
  python benchmarks/summarize.py "$OUT/$run/results.json" > "$OUT/$run/summary.md"
done
