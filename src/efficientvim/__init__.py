"""EfficientViM: Efficient Vision Mamba with Hidden State Mixer based State Space Duality (CVPR 2025).

Quick use::

    import efficientvim
    model = efficientvim.create_model("efficientvim_m2", checkpoint="EfficientViM_M2_e450.pth").eval()
    y, h = efficientvim.HSMSSD(dim=64, state_dim=16)(torch.randn(1, 64, 17, 23))

Names are imported on first use: ``import efficientvim`` costs nothing until a model is needed,
so the command line answers ``--help`` and the ONNX predictor runs without loading torch.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ._lazy import lazy_exports

# ONNX Runtime's official Linux builds send usage events to Microsoft over HTTPS and keep a persistent device id in
# $TMPDIR/.ses from its first import (its Privacy.md); this package runs ONNX Runtime by default (--runtime auto), so
# it turns that off, as the demo turns Gradio's analytics off. Set ORT_DISABLE_TELEMETRY=0 to keep it on.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

__version__ = "0.1.0"

_SOURCES = {
    "fuse": "deploy",
    "CheckpointError": "errors",
    "EfficientViMError": "errors",
    "ImageFileError": "errors",
    "InputSizeError": "errors",
    "UnknownModelError": "errors",
    "count_flops": "flops",
    "HSMSSD": "hsm_ssd",
    "HSMSSDBlock": "plug",
    "C2fHSMSSD": "plug",
    "C3k2HSMSSD": "plug",
    "insert_hsmssd": "plug",
    "EfficientViM": "model",
    "EfficientViMBlock": "model",
    "EfficientViMFeatures": "model",
    "create_model": "registry",
    "from_pretrained": "registry",
    "push_to_hub": "hub",
    "save_pretrained": "hub",
    "list_models": "registry",
    "load_model": "registry",
    "model_config": "registry",
    "Checkpoint": "weights",
    "save_weights": "weights",
}
__all__ = [
    "C2fHSMSSD",
    "C3k2HSMSSD",
    "Checkpoint",
    "CheckpointError",
    "EfficientViM",
    "EfficientViMBlock",
    "EfficientViMError",
    "EfficientViMFeatures",
    "HSMSSD",
    "HSMSSDBlock",
    "ImageFileError",
    "InputSizeError",
    "UnknownModelError",
    "count_flops",
    "create_model",
    "from_pretrained",
    "fuse",
    "insert_hsmssd",
    "list_models",
    "load_model",
    "model_config",
    "push_to_hub",
    "save_pretrained",
    "save_weights",
]

if TYPE_CHECKING:
    from .deploy import fuse
    from .errors import CheckpointError, EfficientViMError, ImageFileError, InputSizeError, UnknownModelError
    from .flops import count_flops
    from .hsm_ssd import HSMSSD
    from .hub import push_to_hub, save_pretrained
    from .model import EfficientViM, EfficientViMBlock, EfficientViMFeatures
    from .plug import C2fHSMSSD, C3k2HSMSSD, HSMSSDBlock, insert_hsmssd
    from .registry import create_model, from_pretrained, list_models, load_model, model_config
    from .weights import Checkpoint, save_weights


__getattr__, __dir__ = lazy_exports(__name__, _SOURCES)
