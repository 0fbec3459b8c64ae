"""Training and evaluation: recipes (``recipes``), the task-agnostic loop (``engine.fit``) and
image classification on top of it (``classification``).

Names are imported on first use, so ``efficientvim.train.recipes`` (what the command line needs to
parse its arguments) loads without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_SOURCES = {
    "evaluate": "classification",
    "evaluate_checkpoint": "classification",
    "train": "classification",
    "Distributed": "engine",
    "FitResult": "engine",
    "FitState": "engine",
    "Loop": "engine",
    "fit": "engine",
    "init_distributed": "engine",
    "RECIPES": "recipes",
    "TrainConfig": "recipes",
    "build_config": "recipes",
}
__all__ = [
    "Distributed",
    "FitResult",
    "FitState",
    "Loop",
    "RECIPES",
    "TrainConfig",
    "build_config",
    "evaluate",
    "evaluate_checkpoint",
    "fit",
    "init_distributed",
    "train",
]

if TYPE_CHECKING:
    from .classification import evaluate, evaluate_checkpoint, train
    from .engine import Distributed, FitResult, FitState, Loop, fit, init_distributed
    from .recipes import RECIPES, TrainConfig, build_config


__getattr__, __dir__ = lazy_exports(__name__, _SOURCES)
