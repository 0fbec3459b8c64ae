#!/usr/bin/env bash
# The user's commands on a GPU machine, as a stranger runs them (the GPU is picked by itself): visualize and
# predict --full-resolution on odd-sized photos, one epoch of segmentation and of detection training, eval.
# Checks that they run there, not what they reach (one epoch). Needs the digits checkpoint (make train).
set -uo pipefail
S=$(mktemp -d); E="python3 -m efficientvim"
python3 - "$S/photos" <<'PYEOF'
import sys, pathlib, numpy as np
from PIL import Image
out = pathlib.Path(sys.argv[1]); out.mkdir()
rng = np.random.default_rng(0)
for i, (w, h) in enumerate([(640, 480), (333, 517)]):
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(out / f"photo{i}.jpg")
PYEOF
echo "== visualize, predict --full-resolution on the GPU"
$E visualize "$S/photos/photo0.jpg" --checkpoint runs/digits/best.safetensors -o "$S/states.png" && ls -la "$S/states.png"
$E predict "$S/photos" --model efficientvim_m1 --full-resolution --topk 1
echo "== segmentation, 1 epoch, then eval"
timeout 60 $E train --task segmentation --epochs 1 --output "$S/seg" 2>&1 | grep -v "batch/s" | tail -3
$E eval --task segmentation --checkpoint "$S/seg/best.safetensors" 2>&1 | tail -2
echo "== detection, 1 epoch"
timeout 70 $E train --task detection --epochs 1 --output "$S/det" 2>&1 | grep -v "batch/s" | tail -3
