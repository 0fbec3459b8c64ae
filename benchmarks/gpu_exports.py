"""Exported files on a GPU: TorchScript (fp32, fp16, bf16) loaded onto CUDA, and the fp16 ONNX file in ONNX
Runtime's CUDA provider where the installed onnxruntime has one; each against the float32 model on CPU.

    python benchmarks/gpu_exports.py runs/digits/best.safetensors

Exports with ``efficientvim export`` into a temporary folder (on the CPU, as a user would), then prints, per
file and device, top-1 on the digits val split, top-1 agreement with float32 and the largest logit change.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

import efficientvim as ev
from efficientvim.cli import main as cli
from efficientvim.data import build_datasets
from efficientvim.train.evaluation import eval_transform


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="a save_weights file (names its model)")
    args = p.parse_args()
    if not torch.cuda.is_available():
        p.error("PyTorch sees no GPU here: this script checks exported files on one")
    model = ev.load_model(args.checkpoint).eval()
    cfg = model.pretrained_cfg
    _, val, _ = build_datasets(None, "", val_transform=eval_transform(cfg["input_size"][-1], cfg), need_train=False,
                               val_classes=cfg.get("label_names"))
    images, labels = zip(*(val[i] for i in range(len(val))))
    x, y = torch.stack(images), torch.tensor(labels)
    with torch.no_grad():
        reference = model(x)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for fmt, precision, suffix in [("torchscript", "fp32", "pt"), ("torchscript", "fp16", "pt"),
                                       ("torchscript", "bf16", "pt"), ("onnx", "fp16", "onnx")]:
            path = Path(tmp) / f"model.{precision}.{suffix}"
            cli(["export", "--checkpoint", args.checkpoint, "--format", fmt, "--precision", precision, "-o", str(path)])
            if suffix == "pt":
                module = torch.jit.load(str(path), map_location="cuda")
                with torch.no_grad():
                    rows[f"TorchScript {precision}, CUDA"] = module(x.cuda()).float().cpu()
            else:
                import onnxruntime as ort

                if "CUDAExecutionProvider" not in ort.get_available_providers():
                    print(f"onnxruntime {ort.__version__} here has no CUDA provider "
                          f"({', '.join(ort.get_available_providers())}): the fp16 ONNX file is not run on the GPU")
                    continue
                session = ort.InferenceSession(str(path), providers=["CUDAExecutionProvider"])
                rows[f"ONNX {precision}, ONNX Runtime CUDA"] = torch.from_numpy(
                    session.run(None, {"images": x.numpy()})[0])
    print(f"{args.checkpoint}: {len(y)} images; float32 on CPU top-1 "
          f"{100 * (reference.argmax(1) == y).float().mean():.2f}%")
    print(f"{'file, device':40s} {'top-1 %':>8s} {'agrees %':>9s} {'max |dlogit|':>13s}")
    for name, z in rows.items():
        top1 = 100 * (z.argmax(1) == y).float().mean()
        agree = 100 * (z.argmax(1) == reference.argmax(1)).float().mean()
        print(f"{name:40s} {top1:8.2f} {agree:9.2f} {(z - reference).abs().max():13.4f}")


if __name__ == "__main__":
    main()
