"""How far low precision moves a trained model's predictions, on real images: top-1 of each precision,
top-1 agreement with the float32 model and the largest logit change.

    python benchmarks/precision_agreement.py runs/digits/best.safetensors            # the digits val split
    python benchmarks/precision_agreement.py best.safetensors --data my_photos       # a folder's val/ split
    python benchmarks/precision_agreement.py best.safetensors --files m.int8.onnx m.tflite m.pte  # exports too

Rows: the model as trained (float32), fused in float32, fused in bfloat16 (``fuse(dtype=torch.bfloat16)``;
float32 where the CPU has no native bfloat16, as fuse says), the fused float32 model under CPU bf16 autocast,
and the model itself converted with ``.to(torch.bfloat16)`` for comparison; then one row per exported file of
``--files`` (.onnx in ONNX Runtime, .pt in TorchScript, .xml in OpenVINO, .pte in ExecuTorch, .tflite in LiteRT;
fixed-shape files are run image by image), made from the same checkpoint by ``efficientvim export``.

``--device cuda`` compares the GPU's rows instead, against the same float32 model on CPU: the model and the fused
model in float32 (cuDNN's TF32 convolutions), fused in float16 and in bfloat16, the fused float32 model under CUDA
float16 and bfloat16 autocast, and the model itself under float16 autocast (the peers' GPU protocol).
"""

from __future__ import annotations

import argparse
import copy
import warnings

import torch

import efficientvim as ev
from efficientvim.data import build_datasets
from efficientvim.train.evaluation import eval_transform


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", help="a save_weights file (names its model)")
    p.add_argument("--data", help="folder with val/<class>/... (default: the embedded digits val split)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--files", nargs="*", default=[], help="exported files of this checkpoint to compare too")
    p.add_argument("--device", default="cpu", help="cpu, or cuda: the GPU's precisions against float32 on CPU")
    args = p.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda: PyTorch sees no GPU here; leave --device out to compare on CPU")
    torch.set_num_threads(args.threads)
    model = ev.load_model(args.checkpoint).eval()
    cfg = model.pretrained_cfg
    _, val, classes = build_datasets(args.data, "", val_transform=eval_transform(cfg["input_size"][-1], cfg),
                                     need_train=False, val_classes=cfg.get("label_names"))
    loader = torch.utils.data.DataLoader(val, batch_size=args.batch_size)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        variants = _cuda_variants(model, args.device) if args.device.startswith("cuda") else _cpu_variants(model, args)
    logits: dict[str, list[torch.Tensor]] = {k: [] for k in variants}
    labels = []
    with torch.inference_mode():
        for x, y in loader:
            labels.append(y)
            for name, run in variants.items():
                logits[name].append(run(x).float())
    labels = torch.cat(labels)
    out = {k: torch.cat(v) for k, v in logits.items()}
    reference = out[next(iter(out))]  # the float32 model on CPU
    span = (reference.max(1).values - reference.min(1).values).median()
    print(f"{args.checkpoint}: {len(labels)} images, {len(classes)} classes, {args.threads} threads; "
          f"median logit range per image {span:.2f}")
    for w in caught:
        print(f"note: {w.message}")
    print(f"{'variant':40s} {'top-1 %':>8s} {'agrees %':>9s} {'max |dlogit|':>13s}")
    for name, z in out.items():
        top1 = 100 * (z.argmax(1) == labels).float().mean()
        agree = 100 * (z.argmax(1) == reference.argmax(1)).float().mean()
        print(f"{name:40s} {top1:8.2f} {agree:9.2f} {(z - reference).abs().max():13.4f}")


def _file_runner(path: str, threads: int):
    """An exported file as a function of a float32 batch, in its own runtime."""
    import numpy as np

    if path.endswith(".onnx"):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        return lambda x: torch.from_numpy(session.run(None, {"images": x.numpy()})[0])
    if path.endswith(".pt"):  # TorchScript
        module = torch.jit.load(path)
        return lambda x: module(x).float()
    if path.endswith(".xml"):
        import openvino as ov

        compiled = ov.Core().compile_model(path, "CPU", {"INFERENCE_NUM_THREADS": threads})
        return lambda x: torch.from_numpy(compiled(x.numpy())[compiled.outputs[0]])
    if path.endswith(".pte"):
        from efficientvim.export import load_executorch

        method = load_executorch(path)
        one = lambda image: method.execute([image[None]])[0].numpy()  # noqa: E731
    elif path.endswith(".tflite"):
        from efficientvim.export import load_litert

        program = load_litert(path, threads)
        one = lambda image: program(image[None].numpy())  # noqa: E731
    else:
        raise SystemExit(f"{path}: not an exported file (.onnx, .pt, .xml, .pte, .tflite)")
    return lambda x: torch.from_numpy(np.concatenate([one(image) for image in x]))


def _cpu_variants(model, args) -> dict:
    fused = ev.fuse(model)
    model_bf16 = copy.deepcopy(model).to(torch.bfloat16)
    return {
        "model, float32": model,
        "fused, float32": fused,
        "fused, bfloat16": ev.fuse(model, dtype=torch.bfloat16),
        "fused float32 under CPU bf16 autocast": lambda x: _autocast(fused, x, "cpu", torch.bfloat16),
        "model .to(bfloat16)": lambda x: model_bf16(x.to(torch.bfloat16)),
        **{f: _file_runner(f, args.threads) for f in args.files},
    }


def _cuda_variants(model, device: str) -> dict:
    gpu = copy.deepcopy(model).to(device)
    fused = ev.fuse(gpu)
    variants = {
        "model, float32 (CPU)": model,
        "model, float32": gpu,
        "fused, float32": fused,
        "fused, float16": ev.fuse(gpu, dtype=torch.float16),
        "fused, bfloat16": ev.fuse(gpu, dtype=torch.bfloat16),
        "fused float32 under fp16 autocast": lambda x: _autocast(fused, x, "cuda", torch.float16),
        "fused float32 under bf16 autocast": lambda x: _autocast(fused, x, "cuda", torch.bfloat16),
        "model under fp16 autocast": lambda x: _autocast(gpu, x, "cuda", torch.float16),
    }
    return {k: v if k.endswith("(CPU)") else _on(device, v) for k, v in variants.items()}


def _on(device: str, run):
    return lambda x: run(x.to(device)).float().cpu()


def _autocast(model, x, device: str, dtype: torch.dtype):
    with torch.autocast(device, dtype):
        return model(x)


if __name__ == "__main__":
    main()
