"""An int8 token softmax in ONNX Runtime (issue 25's lever): the int8 file with Softmax quantized too, against the
shipped one (Softmax in float32), in speed and in top-1.

    python benchmarks/int8_softmax.py efficientvim_m2 --batch-size 32        # speed only (random weights)
    python benchmarks/int8_softmax.py runs/RUN/best.safetensors --size 224   # + top-1 on the digits val split

Writes the model's export graph as ONNX, quantizes it twice with ``efficientvim.quantize.quantize_onnx``
(calibrated on the digits training split at the input size), once with the shipped op list and once with
``Softmax`` added (ONNX Runtime's quantizer gives it a fixed output range [0, 1]: uint8 steps of 1/255), says
which operator ONNX Runtime then runs for the softmax (QLinearSoftmax, or Softmax between a DequantizeLinear and a
QuantizeLinear), times both alternately in one process (median per-round ratio shipped / softmax-int8: above 1
the int8 softmax is faster) and, with a checkpoint, scores fp32, int8 and int8-softmax on the digits val split
at ``--size`` (224 puts 196 tokens under each softmax, where an average weight of 1/196 is about one uint8 step).
"""

from __future__ import annotations

import argparse
import collections
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx_ab import alternate  # benchmarks/ is on the path when this script runs

import efficientvim as ev
from efficientvim.data import DigitsDataset
from efficientvim.deploy.graph import export_graph
from efficientvim.export import MIN_OPSET, write_onnx
from efficientvim.predict import make_transform
from efficientvim.quantize import QUANTIZED_OPS, calibration_images, quantize_onnx
from efficientvim.sessions import onnxruntime_session


def op_counts(path: Path, threads: int) -> collections.Counter:
    """Op types of the graph ONNX Runtime runs (after its optimisations) for the file at ``path``."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3  # not the warning that a saved optimised graph is machine-specific
    optimized = path.with_suffix(".optimized.onnx")
    options.optimized_model_filepath = str(optimized)
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return collections.Counter(node.op_type for node in onnx.load(str(optimized)).graph.node)


def top1(session, x: np.ndarray, y: np.ndarray, batch: int = 64) -> float:
    logits = np.concatenate([session.run(None, {"images": x[i : i + batch]})[0] for i in range(0, len(x), batch)])
    return 100.0 * float((logits.argmax(1) == y).mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="a model name (random weights: speed only) or a checkpoint (speed and top-1)")
    p.add_argument("--size", type=int, help="input size (default: the model's)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    checkpoint = Path(args.model).is_file()
    model = (ev.load_model(args.model) if checkpoint else ev.create_model(args.model)).eval()
    size = (args.size, args.size) if args.size else tuple(model.pretrained_cfg["input_size"][-2:])
    reference, graph = export_graph(model)
    images = calibration_images(reference, None, 256, size)
    with tempfile.TemporaryDirectory() as tmp:
        fp32, shipped, softmax = (Path(tmp) / f"{name}.onnx" for name in ("fp32", "int8", "int8_softmax"))
        write_onnx(graph, fp32, size, MIN_OPSET)
        quantize_onnx(fp32, shipped, images)
        quantize_onnx(fp32, softmax, images, ops=(*QUANTIZED_OPS, "Softmax"))
        for name, path in (("shipped int8", shipped), ("int8 softmax", softmax)):
            ops = op_counts(path, args.threads)
            print(f"{name}: ONNX Runtime runs Softmax x{ops['Softmax']}, QLinearSoftmax x{ops['QLinearSoftmax']}, "
                  f"{sum(ops.values())} nodes")
        sessions = {path: onnxruntime_session(str(path), args.threads) for path in (fp32, shipped, softmax)}
        if checkpoint:
            val = DigitsDataset("val", make_transform(reference, size))
            x = torch.stack([val[i][0] for i in range(len(val))]).numpy()
            y = np.array(val.targets)
            scores = [f"{name} {top1(sessions[path], x, y):.2f}%" for name, path in
                      (("fp32", fp32), ("int8", shipped), ("int8 softmax", softmax))]
            print(f"top-1 on the digits val split ({len(y)} images) at {size[0]}x{size[1]}: " + ", ".join(scores))
        x = np.random.default_rng(0).standard_normal((args.batch_size, 3, *size)).astype(np.float32)
        shipped_ms, softmax_ms, (q1, median, q3) = alternate(lambda: sessions[shipped].run(None, {"images": x}),
                                                             lambda: sessions[softmax].run(None, {"images": x}),
                                                             args.rounds)
        print(f"batch {args.batch_size}, {args.threads} threads: shipped int8 {shipped_ms:.2f} ms, int8 softmax "
              f"{softmax_ms:.2f} ms; shipped / softmax-int8 {median:.3f} (quartiles {q1:.3f}-{q3:.3f})")


if __name__ == "__main__":
    main()
