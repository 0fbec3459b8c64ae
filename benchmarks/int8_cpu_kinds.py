"""int8 files on every kind of x86 CPU: top-1 agreement with float32 where the CPU lacks VNNI, emulated.

    python benchmarks/int8_cpu_kinds.py runs/digits/best.safetensors              # 7- and 8-bit weights, every kind
    python benchmarks/int8_cpu_kinds.py best.safetensors --runtimes onnxruntime   # one runtime

An int8 file is exported on one machine and run on others. CPUs without VNNI (AVX2 only, or AVX-512 without
VNNI) multiply uint8 by int8 with VPMADDUBSW, which saturates its int16 pair sums; CPUs with VNNI do not. A
runtime picks its kernel from CPUID, so the same file gives other answers on other CPUs. Here each file runs
natively and, for the AVX2-only kind, under QEMU's user-mode emulator with a Haswell CPU (Debian's
``qemu-user``: the runtime sees AVX2 and no AVX-512 or VNNI in CPUID and takes its AVX2 kernels, emulated
instruction by instruction, saturation included). QEMU 7.2 emulates no AVX-512, so an AVX-512-without-VNNI
CPU cannot be emulated this way; its ONNX Runtime kernel (AVX512BW) uses the same saturating instruction, which
7-bit weights keep exact by arithmetic (see ``efficientvim.quantize.WEIGHT_BITS``).

Each run first multiplies 255 by 127 in an int8 MatMulInteger to show which kind of kernel the runtime took
(exact: VNNI or no saturating path; saturated: VPMADDUBSW). Rows: runtime, weight bits, CPU kind, kernel seen,
top-1 agreement with float32 PyTorch on the digits val split (or ``--data``'s val/ folder), int8 top-1.
``--child`` is the part that runs under the emulator (numpy and the runtime only, no torch).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# QEMU CPU models: Haswell has AVX2 and FMA, no AVX-512 and no VNNI
EMULATED = {"avx2": "Haswell"}


def saturation_probe(runtime: str) -> str:
    """'exact' or 'saturating': what the runtime's int8 matrix product makes of 64 products of 255 x 127, written
    as the QDQ pattern an int8 export holds (uint8 activations, int8 weights), which both runtimes run in int8."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    k = 64
    inits = [numpy_helper.from_array(np.full((k, 16), 127, np.int8), "w"),
             numpy_helper.from_array(np.array(1.0, np.float32), "one"),
             numpy_helper.from_array(np.array(0, np.uint8), "zu"), numpy_helper.from_array(np.array(0, np.int8), "zs")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "one", "zu"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "one", "zu"], ["xf"]),
             helper.make_node("DequantizeLinear", ["w", "one", "zs"], ["wf"]),
             helper.make_node("MatMul", ["xf", "wf"], ["y"])]
    graph = helper.make_graph(nodes, "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [32, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [32, 16])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    x = np.full((32, k), 255, np.float32)
    if runtime == "onnxruntime":
        import onnxruntime as ort

        y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    else:
        import openvino as ov

        with tempfile.TemporaryDirectory() as tmp:
            onnx.save(model, f"{tmp}/probe.onnx")
            y = ov.Core().compile_model(f"{tmp}/probe.onnx", "CPU", {"INFERENCE_PRECISION_HINT": "f32"})(x)[0]
    return "exact" if round(float(y[0, 0])) == 255 * 127 * k else f"saturating ({float(y[0, 0]):.0f})"


def child(model_file: str, data_file: str, runtime: str) -> None:
    """Run ``model_file`` on the images of ``data_file`` (.npz: x, float32 argmax, labels); print one JSON line."""
    import numpy as np

    data = np.load(data_file)
    x = data["x"]
    if runtime == "onnxruntime":
        import onnxruntime as ort

        session = ort.InferenceSession(model_file, providers=["CPUExecutionProvider"])
        run = lambda b: session.run(None, {"images": b})[0]  # noqa: E731
    elif runtime == "openvino":
        import openvino as ov

        compiled = ov.Core().compile_model(model_file, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
        run = lambda b: compiled(b)[compiled.outputs[0]]  # noqa: E731
    else:  # the fixed-shape formats take one image at a time
        import torch

        from efficientvim.export import load_executorch, load_litert

        if runtime == "litert":
            program = load_litert(model_file, threads=1)
            one = lambda image: program(image[None])  # noqa: E731
        else:
            method = load_executorch(model_file)
            one = lambda image: method.execute([torch.from_numpy(image[None])])[0].numpy()  # noqa: E731
        run = lambda b: np.concatenate([one(image) for image in b])  # noqa: E731
    got = np.concatenate([np.asarray(run(x[i : i + 64])).argmax(1) for i in range(0, len(x), 64)])
    kernel = saturation_probe(runtime) if runtime in ("onnxruntime", "openvino") else "-"
    print(json.dumps({"kernel": kernel, "agreement": 100 * float((got == data["fp32"]).mean()),
                      "top1": 100 * float((got == data["labels"]).mean()), "images": len(x)}))


def run_child(model_file: Path, data_file: Path, runtime: str, kind: str, timeout: float = 1200) -> dict:
    """``child`` in a fresh process: natively (``kind`` "native") or under QEMU as ``kind`` (``EMULATED``)."""
    command = [sys.executable, __file__, "--child", str(model_file), str(data_file), runtime]
    if kind != "native":
        qemu = shutil.which("qemu-x86_64")
        if qemu is None:
            raise RuntimeError("qemu-x86_64 not found: install Debian's qemu-user to emulate other CPUs")
        command = [qemu, "-cpu", EMULATED[kind], *command]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{kind} {runtime} run failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def write_inputs(model, path: Path, data: str | None = None) -> None:
    """The val images, preprocessed as the model's eval transform, float32 argmax and labels, as .npz."""
    import numpy as np
    import torch

    from efficientvim.data import build_datasets
    from efficientvim.train.evaluation import eval_transform

    cfg = model.pretrained_cfg
    _, val, _ = build_datasets(data, "", val_transform=eval_transform(cfg["input_size"][-1], cfg), need_train=False,
                               val_classes=cfg.get("label_names"))
    x = torch.stack([val[i][0] for i in range(len(val))])
    with torch.no_grad():
        fp32 = torch.cat([model(x[i : i + 64]) for i in range(0, len(x), 64)]).argmax(1)
    labels = [val[i][1] for i in range(len(val))]
    np.savez(path, x=x.numpy(), fp32=fp32.numpy(), labels=np.array(labels))


def speed(source: str, bits: list[int], rounds: int = 15) -> None:
    """Median seconds per batch of each weight width's int8 ONNX file in ONNX Runtime, rounds interleaved."""
    import time

    import numpy as np

    import efficientvim as ev
    from efficientvim.export import export_onnx_int8
    from efficientvim.sessions import onnxruntime_session

    model = (ev.load_model(source) if Path(source).is_file() else ev.create_model(source)).eval()
    with tempfile.TemporaryDirectory() as tmp:
        sessions = {}
        for b in bits:
            export_onnx_int8(model, f"{tmp}/m{b}.onnx", check=False, weight_bits=b)
            sessions[b] = onnxruntime_session(f"{tmp}/m{b}.onnx", threads=2)
        side = model.pretrained_cfg["input_size"][-1]
        for batch in (32, 1):
            x = np.random.default_rng(0).standard_normal((batch, 3, side, side), dtype=np.float32)
            times = {b: [] for b in bits}
            for _ in range(rounds):
                for b, session in sessions.items():
                    session.run(None, {"images": x})  # warm
                    start = time.perf_counter()
                    for _ in range(3):
                        session.run(None, {"images": x})
                    times[b].append((time.perf_counter() - start) / 3)
            med = {b: float(np.median(t)) for b, t in times.items()}
            line = "  ".join(f"{b}-bit {1e3 * med[b]:.2f} ms" for b in bits)
            ratio = f"  8-bit/7-bit speed {med[7] / med[8]:.3f}x" if {7, 8} <= set(bits) else ""
            print(f"{source} batch {batch}: {line}{ratio}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", nargs="?", help="a save_weights file (names its model)")
    p.add_argument("--data", help="folder with val/<class>/... (default: the embedded digits val split)")
    p.add_argument("--runtimes", default="onnxruntime,openvino")
    p.add_argument("--bits", default="7,8", help="int8 weight bits to compare (efficientvim.quantize.WEIGHT_BITS)")
    p.add_argument("--kinds", default="native,avx2", help="native and the emulated kinds (avx2)")
    p.add_argument("--speed", action="store_true", help="instead: time the 7- and 8-bit ONNX files natively in "
                   "ONNX Runtime (2 threads, batch 32 and 1, interleaved rounds); CHECKPOINT may be a model name")
    p.add_argument("--child", nargs=3, metavar=("FILE", "NPZ", "RUNTIME"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(*args.child)
    import efficientvim as ev
    from efficientvim.export import export_onnx_int8, export_openvino

    if args.speed:
        return speed(args.checkpoint, [int(b) for b in args.bits.split(",")])
    model = ev.load_model(args.checkpoint).eval()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_inputs(model, tmp / "val.npz", args.data)
        for bits in map(int, args.bits.split(",")):
            export_onnx_int8(model, tmp / f"m{bits}.onnx", check=False, weight_bits=bits)
            files = {"onnxruntime": tmp / f"m{bits}.onnx"}
            if "openvino" in args.runtimes:
                export_openvino(model, tmp / f"m{bits}.xml", "int8", weight_bits=bits)
                files["openvino"] = tmp / f"m{bits}.xml"
            for runtime in args.runtimes.split(","):
                for kind in args.kinds.split(","):
                    r = run_child(files[runtime], tmp / "val.npz", runtime, kind)
                    print(f"{runtime:12s} {bits}-bit weights  {kind:7s} kernel {r['kernel']:10s} agreement "
                          f"{r['agreement']:6.2f}%  int8 top-1 {r['top1']:6.2f}%  ({r['images']} images)", flush=True)


if __name__ == "__main__":
    main()
