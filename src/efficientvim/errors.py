"""Errors a user can cause and fix; the CLI prints their message as one line and exits with 2."""

from __future__ import annotations

import importlib
from types import ModuleType


class EfficientViMError(Exception):
    """Base class for mistakes in user input (names, files, sizes), as opposed to bugs."""


class UnknownModelError(EfficientViMError, ValueError):
    """A model name that is not registered."""


class CheckpointError(EfficientViMError, ValueError):
    """A checkpoint file that is missing, unreadable, foreign or for another architecture."""


class DataError(EfficientViMError, ValueError):
    """A dataset that cannot be used as given: missing splits, mismatched classes, unreadable images."""


class TrainingDivergedError(EfficientViMError, RuntimeError):
    """Training produced a non-finite loss; the last good checkpoint is kept."""


class InputSizeError(EfficientViMError, ValueError):
    """An input tensor or image that the network cannot process (too small, wrong channels)."""


class ImageFileError(EfficientViMError, ValueError):
    """An image file that cannot be read: not an image, truncated or corrupt."""


class RunLockError(EfficientViMError):
    """Another run is writing into the output folder."""


class ConfigError(EfficientViMError, ValueError):
    """An unknown recipe, config key or setting, or a malformed config file or environment variable."""


class DistributedSetupError(EfficientViMError):
    """Distributed variables that do not describe a run (WORLD_SIZE without torchrun, a rank out of range), or
    processes that never joined."""


class DiskFullError(EfficientViMError):
    """A file that could not be written for lack of space (an earlier file of that name is unchanged)."""


class ExportError(EfficientViMError):
    """An export that could not be written or does not reproduce the PyTorch model, or a file that is not one."""


class MissingExtraError(EfficientViMError, ImportError):
    """An optional dependency that is not installed; the message names the extra that brings it."""


def import_extra(module: str, extra: str, purpose: str) -> ModuleType:
    """``importlib.import_module(module)``, or a MissingExtraError saying which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(
            f"{purpose} needs {module.split('.')[0]}, which is not installed: pip install 'efficientvim[{extra}]'"
        ) from None
