#!/usr/bin/env bash
# The CPU runs behind docs/benchmarks.md (their results are in docs/results/<run>/). Each command
# times its models interleaved (one call of each model per round): compare figures within a run.
set -euo pipefail
OUT=${OUT:-bench-results}
THREADS=${THREADS:-2}
OURS="efficientvim_m1+fuse,efficientvim_m2+fuse,efficientvim_m3+fuse,efficientvim_m4+fuse"
TIMM="timm:efficientvim_m1,timm:efficientvim_m2,timm:efficientvim_m3,timm:efficientvim_m4"
SHVIT="timm:shvit_s1,timm:shvit_s2,timm:shvit_s3,timm:shvit_s4"

# eager PyTorch, batch 32 throughput and batch 1 latency, each model at its training resolution
efficientvim bench --runtimes eager --models "$OURS,$TIMM,$SHVIT" --batch-size 32 --threads "$THREADS" \
  --repeats 10 --warmup 3 -o "$OUT/eager-core"

# batch-1 latency against timm's EfficientViM alone, more rounds (the "Batch-1 latency, packed GEMMs" runs)
efficientvim bench --runtimes eager --models "$OURS,$TIMM" --batch-size 1 --no-latency --threads "$THREADS" \
  --repeats 40 --warmup 5 -o "$OUT/eager-b1"

# ONNX Runtime: our exported fused graph against timm's exported models
efficientvim bench --runtimes onnxruntime --models "$OURS,$TIMM,$SHVIT" --batch-size 32 --threads "$THREADS" \
  --repeats 10 --warmup 3 -o "$OUT/onnxruntime"

# resolution scaling at batch 1 against SHViT
efficientvim bench --runtimes eager \
  --models "efficientvim_m2+fuse,timm:efficientvim_m2,timm:shvit_s2,efficientvim_m4+fuse,timm:efficientvim_m4,timm:shvit_s4" \
  --resolutions 224,384,512,768,1024 --batch-size 1 --no-latency --threads "$THREADS" --repeats 5 --warmup 1 \
  -o "$OUT/resolution"

# every peer (the default model list)
efficientvim bench --runtimes eager --batch-size 32 --threads "$THREADS" --repeats 10 --warmup 3 -o "$OUT/eager-all"

# torch.compile, every variant (compilation happens during warm-up and takes a minute or more per model and batch)
efficientvim bench --runtimes compile --models "$OURS,$TIMM" --batch-size 32 --threads "$THREADS" \
  --repeats 5 --warmup 2 -o "$OUT/compile"

for run in eager-core eager-b1 onnxruntime resolution eager-all compile; do
  python benchmarks/summarize.py "$OUT/$run/results.json" > "$OUT/$run/summary.md"
done
