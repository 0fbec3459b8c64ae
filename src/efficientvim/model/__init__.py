"""The EfficientViM network: gated blocks, stages, the multi-stage hidden-state fusion (MSF) head.

``EfficientViM`` is the classifier (optionally distilled); ``EfficientViMFeatures`` is the same
trunk returning feature maps for dense prediction. Both keep the released checkpoint's parameter
names, so state dicts move between this package, the authors' code and timm unchanged.
"""

from .blocks import EfficientViMBlock, EfficientViMStage, per_stage
from .classifier import EfficientViM, Logits, _check_global_pool
from .features import STEM_STRIDES, EfficientViMFeatures
from .trunk import STEM_STRIDE, _check_input

__all__ = [
    "STEM_STRIDE", "STEM_STRIDES", "EfficientViM", "EfficientViMBlock", "EfficientViMFeatures", "EfficientViMStage",
    "Logits", "_check_global_pool", "_check_input", "per_stage",
]
