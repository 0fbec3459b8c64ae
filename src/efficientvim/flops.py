"""Multiply-accumulate counting with PyTorch's own FLOP counter (one multiply-add = 1)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@torch.no_grad()
def count_flops(model: nn.Module, size: int | tuple[int, int] = 224, batch_size: int = 1) -> int:
    """Multiply-adds of one forward pass at ``size`` per image, counted by ``torch.utils.flop_counter``.

    Convolutions and matrix products are counted; element-wise ops (norms, activations, softmax)
    are not, the convention of the EfficientViM paper and its peers.
    """
    height, width = (size, size) if isinstance(size, int) else size
    in_chans = getattr(model, "in_chans", 3)
    param = next(model.parameters())
    x = torch.zeros(batch_size, in_chans, height, width, device=param.device, dtype=param.dtype)
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    # torch counts a multiply-add as 2 FLOPs
    return counter.get_total_flops() // (2 * batch_size)
