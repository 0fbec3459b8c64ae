"""Shared fixtures: timm reference models with every parameter and BN statistic randomised."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from torch import nn

torch.set_num_threads(2)


# The ONNX graphs --runtime auto caches go to the test session's own folder, never the user's: set at import, before
# any test module copies os.environ for its subprocesses
_CACHE = tempfile.mkdtemp(prefix="efficientvim-test-cache-")
os.environ["EFFICIENTVIM_CACHE"] = _CACHE


@pytest.fixture(scope="session", autouse=True)
def onnx_cache():
    """The session's ONNX cache folder, removed at the end."""
    yield Path(_CACHE) / "onnx"
    shutil.rmtree(_CACHE, ignore_errors=True)


def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter and BatchNorm running statistic a random, well-scaled value.

    Scales keep activations O(1) through the depth so logits comparisons are meaningful.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("alpha"):
                p.copy_(torch.randn(p.shape, generator=g))
            elif name.endswith(".A"):
                p.copy_(torch.rand(p.shape, generator=g) * 15 + 1)
            elif p.dim() <= 1:
                scale_like = name.endswith("weight") or name.endswith(".D")
                noise = torch.randn(p.shape, generator=g)
                p.copy_(1.0 + 0.2 * noise if scale_like else 0.1 * noise)
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / fan_in**0.5)
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
    return model


@pytest.fixture
def randomize():
    """The ``randomize_`` function, for models built in a test."""
    return randomize_


@pytest.fixture
def timm_reference():
    """Factory: a timm efficientvim model with randomised weights, in eval mode."""
    import timm

    def make(name: str, seed: int = 0, **kwargs) -> nn.Module:
        return randomize_(timm.create_model(name, **kwargs), seed).eval()

    return make


def relative_error(reference, other) -> float:
    """max |other - reference| / max |reference|, for torch tensors or numpy arrays."""
    return float(abs(reference - other).max() / abs(reference).max())


# a narrow M1 with four photo classes whose heads are far from uniform, so labels differ between photos
PHOTO_CLASSES = ["cat", "cup", "man", "sky"]
NARROW = dict(embed_dim=(16, 32, 48), depths=(1, 1, 1), state_dim=(4, 4, 4))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A save_weights file of a narrow M1 with the four classes ``PHOTO_CLASSES`` (random, seed 0)."""
    import efficientvim as ev

    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    torch.manual_seed(0)
    model = ev.create_model("efficientvim_m1", num_classes=len(PHOTO_CLASSES), **NARROW)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("heads."):
                p.normal_(0.0, 5.0)  # heads far from uniform: labels differ between photos
    ev.save_weights(model, path, class_names=PHOTO_CLASSES)
    return path
