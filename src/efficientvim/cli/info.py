"""``efficientvim info``: parameters, FLOPs, per-stage shapes, state sizes and forward memory of a model."""

from __future__ import annotations

import argparse
import json

from .common import add_model_args, input_size, model_from_args

HELP = "parameters, FLOPs, stage shapes, hidden-state sizes and forward memory"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", metavar="NAME", nargs="?", help="model name, e.g. efficientvim_m2 (see `efficientvim "
                   "models`); optional with a --checkpoint that names its architecture")
    add_model_args(p, name_option=False)
    p.add_argument("--img-size", type=input_size, metavar="N", help="input size N x N (default: the model's own)")
    p.add_argument("--json", action="store_true", help="print the numbers as one JSON object")


def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB"


def _dims(shape: list[int] | None) -> str:
    return " x ".join(map(str, shape)) if shape else "-"


def run(args: argparse.Namespace) -> int:
    from ..predict import set_input_size
    from ..summary import model_summary

    # the architecture is all info needs: a weights tag (NAME.TAG) downloads nothing
    args.model = args.name.partition(".")[0] if args.name and args.checkpoint is None else args.name
    model = model_from_args(args)
    if args.img_size is not None:
        set_input_size(model, args.img_size)
    size = model.pretrained_cfg["input_size"][1]
    s = model_summary(model, size)
    if args.json:
        print(json.dumps(s, indent=2))
        return 0
    print(f"{s['model']} at {size}x{size}, {s['num_classes']} classes")
    print(f"  parameters      {s['params']:,}")
    print(f"  FLOPs           {s['macs'] / 1e6:,.1f} M multiply-adds per image ({s['macs']:,})")
    print(f"  weights         {_mib(s['weight_bytes'])} in fp32")
    print(
        f"  forward memory  {_mib(s['forward_memory_bytes'])} peak of live activations "
        f"(batch 1, fp32, no grad; input {_mib(s['input_bytes'])} and weights not included)"
    )
    print()
    header = ("part", "blocks", "output C x H x W", "states N", "hidden state C x N", "parameters")
    rows = [
        (
            p["part"],
            str(p["blocks"] or "-"),
            _dims(p["output"]),
            str(p["state_dim"] or "-"),
            _dims(p["hidden_state"]),
            f"{p['params']:,}",
        )
        for p in s["parts"]
    ]
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        print("  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    print("\n  a stage's parameters include the downsampling that follows it; its output is before that downsampling")
    return 0
