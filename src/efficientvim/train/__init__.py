"""Training and evaluation: recipes (``recipes``), the task-agnostic loop (``loop.fit``, with
``distributed``, ``checkpoints`` and ``metrics``) and
image classification on top of it (``classification``).

Names are imported on first use, so ``efficientvim.train.recipes`` (what the command line needs to
parse its arguments) loads without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_SOURCES = {
    "evaluate": "evaluation",
    "evaluate_checkpoint": "evaluation",
    "train": "classification",
    "Distributed": "distributed",
    "FitResult": "loop",
    "FitState": "checkpoints",
    "Loop": "loop",
    "fit": "loop",
    "init_distributed": "distributed",
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
    from .checkpoints import FitState
    from .classification import train
    from .distributed import Distributed, init_distributed
    from .evaluation import evaluate, evaluate_checkpoint
    from .loop import FitResult, Loop, fit
    from .recipes import RECIPES, TrainConfig, build_config


__getattr__, __dir__ = lazy_exports(__name__, _SOURCES)
