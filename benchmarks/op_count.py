"""Computing operators per forward pass: on a GPU each is (at least) one kernel launch, which is what an eager
model at small sizes waits on (docs/benchmarks.md, "CUDA: NVIDIA H200").

    python benchmarks/op_count.py efficientvim_m2+fuse timm:efficientvim_m2 timm:shvit_s2

Names as ``efficientvim bench`` takes them. Counted with the PyTorch profiler on CPU, batch 2 at each model's
training resolution; views, reshapes, allocations and the wrappers that only dispatch to another operator
(``aten::linear`` -> ``aten::addmm``) are left out, so what remains is the work a GPU would launch.
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import profile

from efficientvim.bench import build_model, native_resolution

NOT_COMPUTING = {
    "aten::view", "aten::reshape", "aten::_reshape_alias", "aten::_unsafe_view", "aten::permute", "aten::transpose",
    "aten::t", "aten::as_strided", "aten::unsqueeze", "aten::squeeze", "aten::flatten", "aten::slice", "aten::select",
    "aten::expand", "aten::narrow", "aten::split", "aten::split_with_sizes", "aten::chunk", "aten::unbind",
    "aten::alias", "aten::detach", "aten::resolve_conj", "aten::lift_fresh", "aten::numpy_T", "aten::contiguous",
    "aten::empty", "aten::empty_like", "aten::empty_strided", "aten::resize_", "aten::matmul", "aten::linear",
    "aten::conv2d", "aten::convolution", "aten::layer_norm", "aten::softmax", "aten::dropout",
}  # fmt: skip


def count(name: str) -> int:
    model = build_model(name)
    x = torch.randn(2, 3, native_resolution(name), native_resolution(name))
    with torch.inference_mode():
        model(x)
        with profile() as prof:
            model(x)
    return sum(e.count for e in prof.key_averages()
               if e.key.startswith(("aten::", "mkldnn::", "mkl::")) and e.key not in NOT_COMPUTING)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+")
    for name in p.parse_args().models:
        print(f"{name:32s} {count(name):4d} computing operators per forward")


if __name__ == "__main__":
    main()
