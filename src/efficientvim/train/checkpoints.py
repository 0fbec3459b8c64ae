"""Where a run is kept: ``last.pt`` written atomically after every epoch (tensors and plain containers only, so
it loads with ``torch.load(weights_only=True)``), read back to resume, mid-epoch if need be, and refused with
the changes named when the settings differ."""


from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ..errors import CheckpointError, RunLockError
from ..writing import replacing

if TYPE_CHECKING:  # annotations only: the loop imports this module
    from .distributed import Distributed
    from .loop import Loop

LAST = "last.pt"


# settings that do not change what a run computes: a rerun may change them and still resume
RUN_ONLY_SETTINGS = ("workers", "output")


LOCK = ".efficientvim.lock"  # in the output folder while a run writes into it: {"pid", "host"}


@contextlib.contextmanager
def run_lock(output: Path, log: Callable[[str], None]) -> Iterator[None]:
    """Hold ``output``'s lock (creating the folder) while the block runs, from before a run reads anything
    there: a second run started into the same folder is refused in one line naming the owner (two runs mixed their
    metrics and one died on the other's files). The lock file is created exclusively (never an existing file, nor a
    link planted at its name); a lock left by a process of this host that is gone is taken over, with a note; one
    from another host is not (it cannot be checked). In a distributed run the first process holds it."""
    if os.environ.get("RANK", "0") != "0":  # distributed: the first process holds it for all
        yield
        return
    made = [d for d in (output, *output.parents) if not d.exists()]  # folders to leave as they were if unused
    output.mkdir(parents=True, exist_ok=True)
    path, me = output / LOCK, {"pid": os.getpid(), "host": socket.gethostname()}
    for _ in range(3):  # a stale lock is removed and taking it tried again; another taker may win that race
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            owner = _lock_owner(path)
            if owner is None or _alive(owner, me["host"]):
                who = f"pid {owner['pid']} on {owner['host']}" if owner else "a run that is starting"
                raise RunLockError(f"{output} is in use by another training ({who}): wait for it to end or choose "
                                   f"another --output (if no run is left, remove {path})") from None
            log(f"note: taking over {path}: its run (pid {owner['pid']} on {owner['host']}) is gone")
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            continue
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(me))
        break
    else:
        raise RunLockError(f"{output}: could not take {path} (another run keeps taking it)")
    try:
        yield
    finally:
        if _lock_owner(path) == me:
            path.unlink()
        for folder in made:  # a run refused before it wrote anything leaves no folder behind
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty


def _lock_owner(path: Path) -> dict | None:
    """The lock's {"pid", "host"}, or None while its writer has not written it yet (tried for a second)."""
    for _ in range(10):
        try:
            owner = json.loads(path.read_text())
            if isinstance(owner, dict) and isinstance(owner.get("pid"), int) and isinstance(owner.get("host"), str):
                return owner
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    return None


def _alive(owner: dict, host: str) -> bool:
    """Whether the lock's process may still run: yes for another host (unknowable), else as the OS says."""
    if owner["host"] != host:
        return True
    try:
        os.kill(owner["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def atomic_save(obj: Any, path: Path) -> None:
    """torch.save through :func:`efficientvim.writing.replacing`: a fresh file beside ``path``, flushed to disk,
    then renamed over it (the earlier ``last.pt`` survives a full disk or a kill); its size, the tensors' bytes,
    is checked against the free space first."""
    with replacing(path, size=_tensor_bytes(obj)) as f:
        torch.save(obj, f)


def _tensor_bytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def load_training_state(path: Path) -> dict:
    """Read a ``last.pt`` without executing code (tensors and plain containers only). The tensors are mapped
    from the file, not read: a look at its settings or position (``check_resume``) costs no full read."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # truncated files and foreign pickles raise many types
        raise CheckpointError(
            f"cannot resume: {path} is unreadable ({type(e).__name__}); move it away to start afresh"
        ) from None


def check_resume(output: Path, settings: dict, allow_changes: bool, log: Callable[[str], None]) -> bool:
    """True when ``output`` holds a run to resume. A run saved with other ``settings`` is refused, naming
    each change, unless ``allow_changes`` (then the changes are logged and the run continues)."""
    last = output / LAST
    if not last.exists():
        return False
    saved = load_training_state(last).get("settings")
    if saved is None:  # written before settings were recorded
        return True
    changes = [f"{k} {saved.get(k)!r} -> {v!r}" for k, v in settings.items() if saved.get(k) != v]
    changes += [f"{k} {v!r} -> unset" for k, v in saved.items() if k not in settings]
    if changes and not allow_changes:
        raise CheckpointError(
            f"{output} holds a run with other settings ({'; '.join(changes)}): pass --resume to continue it with "
            f"these settings, or choose another --output (or remove {last}) to start afresh"
        )
    if changes:
        log(f"resuming {output} with changed settings: {'; '.join(changes)}")
    return True


@dataclass
class FitState:
    """Where a run stands; saved in last.pt. ``step`` counts batches done in epoch ``epoch``."""

    epoch: int = 0
    step: int = 0
    updates: int = 0
    best_score: float = -math.inf
    best_epoch: int = 0


def resume(loop: Loop, net: nn.Module, scaler: torch.amp.GradScaler | None) -> tuple[FitState, bool]:
    """Load ``output/last.pt`` into the model, EMA, optimiser and scaler; (its position, True), or a fresh start."""
    last = loop.output / LAST
    if not last.exists():
        return FitState(), False
    saved = load_training_state(last)
    try:
        net.load_state_dict(saved["model"])
        if loop.ema is not None and "model_ema" in saved:
            loop.ema.module.load_state_dict(saved["model_ema"])
        loop.optimizer.load_state_dict(saved["optimizer"])
    except (RuntimeError, ValueError, KeyError) as e:
        raise CheckpointError(
            f"cannot resume from {last}: it belongs to a different model or setup "
            f"({str(e).strip().splitlines()[0][:120]}); use another --output or move it away"
        ) from None
    if scaler is not None and "scaler" in saved:
        scaler.load_state_dict(saved["scaler"])
    state = FitState(**saved["fit_state"])
    where = f"epoch {state.epoch + 1}/{loop.epochs}" + (f", batch {state.step}" if state.step else "")
    if state.epoch >= loop.epochs:
        where = f"the end ({loop.epochs} epochs done)"
    loop.log(f"resumed from {last} at {where}")
    return state, True


def save_last(loop: Loop, net: nn.Module, scaler: torch.amp.GradScaler | None, state: FitState, d: Distributed) -> None:
    """Write ``output/last.pt`` (rank 0): weights, EMA, optimiser, scaler, position, metadata and settings."""
    if not d.is_main:
        return
    blob = {"model": net.state_dict(), "optimizer": loop.optimizer.state_dict(), "fit_state": asdict(state)}
    if loop.ema is not None:
        blob["model_ema"] = loop.ema.module.state_dict()
    if scaler is not None:
        blob["scaler"] = scaler.state_dict()
    blob["metadata"] = loop.metadata()
    blob["settings"] = loop.settings
    atomic_save(blob, loop.output / LAST)


def saved_epoch(path: Path) -> int:
    try:
        return int(load_training_state(path)["fit_state"]["epoch"])
    except (CheckpointError, KeyError):
        return 0
