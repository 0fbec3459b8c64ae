"""TorchScript: the fused graph traced, metadata as an extra file, loaded back and checked."""

from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from ..deploy import export_graph
from .common import check_precision, check_sizes, metadata, outputs, written_whole
from .verify import verify


@written_whole
def export_torchscript(model: nn.Module, path: str | os.PathLike, img_size: int | None = None,
                       precision: str = "fp32") -> float:
    """Write ``model`` (fused first) as a traced TorchScript module; return the verified error.

    The saved file is loaded back and compared with the PyTorch model on a square and a
    non-square batch. Metadata is stored as the extra file ``metadata.json``. ``precision`` fp16 or bf16:
    the module computes in it behind a float32 interface (bf16 for CPUs with AVX512-BF16 or AMX and GPUs,
    fp16 for GPUs), checked to twice the model's own error in that precision.
    """
    check_precision(precision, "torchscript")
    reference, graph = export_graph(model, precision)
    sizes = check_sizes(reference, img_size)
    sample = torch.zeros(*sizes[0][:1], reference.in_chans, *sizes[0][1:])
    path = Path(path)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about shape arithmetic, checked below instead
        traced = torch.jit.trace(graph, sample, check_trace=False)
        meta = {k: json.loads(v) for k, v in metadata(reference).items()}
        meta["precision"] = precision
        # serialised in memory, then written by Python: torch's own file writer aborts the process on a full disk
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer, _extra_files={"metadata.json": json.dumps(meta)})
        path.write_bytes(buffer.getvalue())
        loaded = torch.jit.load(str(path))
    return verify(reference, lambda x: outputs(loaded(x)), sizes, f"TorchScript export {path}", precision)
