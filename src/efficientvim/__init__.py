"""EfficientViM: Efficient Vision Mamba with Hidden State Mixer based State Space Duality (CVPR 2025).

Quick use::

    import efficientvim
    model = efficientvim.create_model("efficientvim_m2", checkpoint="EfficientViM_M2_e450.pth").eval()
    y, h = efficientvim.HSMSSD(dim=64, state_dim=16)(torch.randn(1, 64, 17, 23))
"""

from .deploy import fuse
from .errors import CheckpointError, EfficientViMError, ImageFileError, InputSizeError, UnknownModelError
from .flops import count_flops
from .hsm_ssd import HSMSSD
from .model import EfficientViM, EfficientViMBlock, EfficientViMFeatures
from .registry import create_model, list_models, load_model, model_config
from .weights import Checkpoint, save_weights

__version__ = "0.1.0"
__all__ = [
    "HSMSSD",
    "Checkpoint",
    "CheckpointError",
    "EfficientViM",
    "EfficientViMBlock",
    "EfficientViMError",
    "EfficientViMFeatures",
    "ImageFileError",
    "InputSizeError",
    "UnknownModelError",
    "count_flops",
    "create_model",
    "fuse",
    "list_models",
    "load_model",
    "model_config",
    "save_weights",
]
