"""What a model is and costs at one input size: parameters, FLOPs, shapes, hidden-state sizes, forward memory."""

from __future__ import annotations

import weakref

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .flops import count_flops


class _LiveTensorBytes(TorchDispatchMode):
    """Tracks the bytes of tensor storages created by aten ops and still referenced, and their peak.

    A storage counts from the op that creates it until the last tensor viewing it is freed, so
    in-place ops and views add nothing. Storages in ``exclude`` (weights, the input) never count.
    """

    def __init__(self, exclude: set[int]) -> None:
        super().__init__()
        self.exclude = exclude
        self.users: dict[int, list[int]] = {}  # storage address -> [live tensors, bytes]
        self.live = 0
        self.peak = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._track(t)
        return out

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key == 0 or key in self.exclude:
            return
        entry = self.users.get(key)
        if entry is None:
            entry = self.users[key] = [0, storage.nbytes()]
            self.live += entry[1]
            self.peak = max(self.peak, self.live)
        entry[0] += 1
        weakref.finalize(t, self._release, key)

    def _release(self, key: int) -> None:
        entry = self.users[key]
        entry[0] -= 1
        if entry[0] == 0:
            self.live -= entry[1]
            del self.users[key]


@torch.no_grad()
def forward_memory(model: nn.Module, x: torch.Tensor) -> int:
    """Peak bytes of activations alive at once during one no-grad forward of ``x``.

    Counts every tensor the forward pass creates, from the op that makes it until it is freed;
    the weights and ``x`` itself are not counted, nor allocator rounding or the scratch space
    that convolution libraries use inside a single op.
    """
    exclude = {t.untyped_storage().data_ptr() for t in (*model.parameters(), *model.buffers(), x)}
    was_training = model.training
    model.eval()
    try:
        with _LiveTensorBytes(exclude) as tracker:
            model(x)
    finally:
        model.train(was_training)
    return tracker.peak


def _count(module: nn.Module | nn.Parameter | None) -> int:
    if module is None:
        return 0
    if isinstance(module, nn.Parameter):
        return module.numel()
    return sum(p.numel() for p in module.parameters())


@torch.no_grad()
def model_summary(model: nn.Module, size: int) -> dict:
    """Parameters (total and per part), multiply-adds, per-stage shapes and forward memory at ``size`` x ``size``."""
    param = next(model.parameters())
    x = torch.zeros(1, model.in_chans, size, size, device=param.device, dtype=param.dtype)
    model.eval()
    states, maps = model.forward_intermediates(x)
    stem = model.patch_embed(x)
    parts = [dict(part="stem", blocks=0, output=list(stem.shape[1:]), state_dim=None, hidden_state=None,
                  params=_count(model.patch_embed))]
    for i, (stage, out, h) in enumerate(zip(model.stages, maps, states)):
        parts.append(dict(part=f"stage {i + 1}", blocks=len(stage.blocks), output=list(out.shape[1:]),
                          state_dim=int(h.shape[-1]), hidden_state=list(h.shape[1:]), params=_count(stage)))
    head = [model.norm, model.heads, model.weights]
    if model.distilled:
        head += [model.heads_dist, model.weights_dist]
    parts.append(dict(part="MSF head", blocks=0, output=[model.num_classes], state_dim=None, hidden_state=None,
                      params=sum(_count(m) for m in head)))
    total = sum(p.numel() for p in model.parameters())
    if total != sum(p["params"] for p in parts):
        raise AssertionError("the parts do not cover every parameter")
    return dict(
        model=model.model_name,
        img_size=size,
        num_classes=model.num_classes,
        params=total,
        weight_bytes=sum(p.numel() * p.element_size() for p in model.parameters()),
        macs=count_flops(model, size),
        forward_memory_bytes=forward_memory(model, x),
        input_bytes=x.numel() * x.element_size(),
        parts=parts,
    )
