"""Training and evaluation: recipes (``recipes``), the task-agnostic loop (``engine.fit``) and
image classification on top of it (``classification``)."""

from .classification import evaluate, evaluate_checkpoint, train
from .engine import Distributed, FitResult, FitState, Loop, fit, init_distributed
from .recipes import RECIPES, TrainConfig, build_config

__all__ = [
    "RECIPES",
    "Distributed",
    "FitResult",
    "FitState",
    "Loop",
    "TrainConfig",
    "build_config",
    "evaluate",
    "evaluate_checkpoint",
    "fit",
    "init_distributed",
    "train",
]
