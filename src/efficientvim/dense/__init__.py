"""Dense prediction on EfficientViM: torchvision detectors, Semantic FPN, datasets, metrics and loop pieces.

from efficientvim.dense import create_detector, create_segmenter
detector = create_detector("maskrcnn", "efficientvim_m4", num_classes=80, checkpoint="EfficientViM_M4_e450.pth")
segmenter = create_segmenter("semantic_fpn", "efficientvim_m4", num_classes=150)
"""

from .backbone import LEVEL_STRIDES, EfficientViMFPN, build_backbone, split_strides
from .data import CocoDetection, DigitCanvases, SegmentationFolder
from .detection import create_detector
from .recipe import DEFAULT_RECIPES, RECIPES, DenseRecipe, build_canvases, build_model, default_recipe, named_recipe
from .segmentation import SemanticFPN, create_segmenter
from .steps import collate_detection, collate_segmentation, evaluate, train_step

__all__ = [
    "DEFAULT_RECIPES",
    "RECIPES",
    "named_recipe",
    "DenseRecipe",
    "build_canvases",
    "build_model",
    "default_recipe",
    "CocoDetection",
    "DigitCanvases",
    "EfficientViMFPN",
    "SegmentationFolder",
    "SemanticFPN",
    "build_backbone",
    "split_strides",
    "LEVEL_STRIDES",
    "collate_detection",
    "collate_segmentation",
    "create_detector",
    "create_segmenter",
    "evaluate",
    "train_step",
]
