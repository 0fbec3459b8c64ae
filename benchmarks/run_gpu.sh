#!/usr/bin/env bash
# The GPU runs behind docs/benchmarks.md's CUDA section, in one go (a lent GPU's time is short):
# the CUDA tests, the precision agreement of the trained digits model on the GPU, the user's commands
# (classification and dense, as a stranger runs them), then the batch-256 benchmark (eager and CUDA
# graphs, fp16 and bf16, channels-last) against SHViT and timm's port, torch.compile for the M2/S2 pair,
# the dense benchmark and the exported files on the GPU. Each step's results are copied to $OUT as it ends.
# (The calls of 2026-11-30 ran these steps as separate calls of the same commands.)
#   OUT=gpu-results CHECKPOINT=runs/digits/best.safetensors bash benchmarks/run_gpu.sh
set -uo pipefail
OUT=${OUT:-gpu-results}
CHECKPOINT=${CHECKPOINT:-runs/digits/best.safetensors}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
SCRATCH=$(mktemp -d)
OURS="efficientvim_m1+fuse,efficientvim_m2+fuse,efficientvim_m3+fuse,efficientvim_m4+fuse"
TIMM="timm:efficientvim_m1,timm:efficientvim_m2,timm:efficientvim_m3,timm:efficientvim_m4"
SHVIT="timm:shvit_s1,timm:shvit_s2,timm:shvit_s3,timm:shvit_s4"

nvidia-smi --query-gpu=name,driver_version,clocks.max.sm --format=csv,noheader
$PY -c "import torch, timm; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'timm', timm.__version__)"

echo "== CUDA tests"
$PY -m pytest -q -p no:cacheprovider tests/test_cuda.py

echo "== precision agreement on the GPU ($CHECKPOINT, digits val split)"
$PY benchmarks/precision_agreement.py "$CHECKPOINT" --device cuda

echo "== the user's commands on the GPU (used when present): train with --amp, eval in bf16, predict photos"
$PY -m efficientvim train --epochs 2 --amp --output "$SCRATCH/run" 2>&1 | tail -3
$PY -m efficientvim eval --checkpoint "$SCRATCH/run/best.safetensors" --precision bf16
$PY - "$SCRATCH/photos" <<'PYEOF'
import sys, pathlib, numpy as np
from PIL import Image
out = pathlib.Path(sys.argv[1]); out.mkdir()
rng = np.random.default_rng(0)
for i, (w, h) in enumerate([(640, 480), (333, 517), (1024, 97)]):
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(out / f"photo{i}.jpg")
PYEOF
$PY -m efficientvim predict --checkpoint "$CHECKPOINT" --precision bf16 --topk 1 "$SCRATCH/photos"
$PY -m efficientvim predict --model efficientvim_m1 --full-resolution --topk 1 "$SCRATCH/photos"
$PY -m efficientvim visualize "$SCRATCH/photos/photo0.jpg" --checkpoint "$CHECKPOINT" -o "$SCRATCH/states.png"
echo "== dense training and evaluation on the GPU, one epoch each (that they run, not what they reach)"
$PY -m efficientvim train --task segmentation --epochs 1 --output "$SCRATCH/seg" 2>&1 | grep -v "batch/s" | tail -2
$PY -m efficientvim eval --task segmentation --checkpoint "$SCRATCH/seg/best.safetensors" 2>&1 | tail -1
$PY -m efficientvim train --task detection --epochs 1 --output "$SCRATCH/det" 2>&1 | grep -v "batch/s" | tail -2

echo "== batch 256 and batch 1: eager and CUDA graphs, fp16 and bf16"
$PY -m efficientvim bench --device cuda --runtimes eager,cudagraph --precision fp16,bf16 \
  --models "$OURS,$TIMM,$SHVIT,timm:mobilenetv3_large_100" --batch-size 256 --warmup 5 --repeats 30 \
  --no-progress -o "$SCRATCH/cuda"
cp "$SCRATCH/cuda/results.json" "$OUT/cuda.json"
cp "$SCRATCH/cuda/speed_accuracy_fp16.png" "$OUT/" 2>/dev/null

echo "== torch.compile, fp16, batch 256: M2 against SHViT-S2"
$PY -m efficientvim bench --device cuda --runtimes compile --precision fp16 \
  --models "efficientvim_m2+fuse,timm:efficientvim_m2,timm:shvit_s2" --batch-size 256 --no-latency \
  --warmup 3 --repeats 30 --no-progress -o "$SCRATCH/compile"
cp "$SCRATCH/compile/results.json" "$OUT/cuda-compile.json"

echo "== dense: trunk levels + FPN at 512x512, batch 32 (the paper's dense latency protocol), fp16"
$PY -m efficientvim bench --device cuda --task dense --runtimes eager,cudagraph --precision fp16 \
  --models "$OURS,$TIMM,$SHVIT" --batch-size 32 --warmup 5 --repeats 30 --no-progress -o "$SCRATCH/dense"
cp "$SCRATCH/dense/results.json" "$OUT/cuda-dense.json"

echo "== exported files on the GPU (TorchScript fp32/fp16/bf16 on CUDA; fp16 ONNX where ONNX Runtime has CUDA)"
$PY benchmarks/gpu_exports.py "$CHECKPOINT"
