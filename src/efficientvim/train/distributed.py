"""Distributed data-parallel set-up for training: the process group from torchrun's variables, a sampler that
resumes mid-epoch, sums over processes, and DDP's gradient layout on channels-last convolutions."""


from __future__ import annotations

import contextlib
import itertools
import os
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler

from ..errors import DistributedSetupError


@dataclass(frozen=True)
class Distributed:
    """This process's place in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


JOIN_NOTICE_S = 10.0  # after this long without the group, say what the process waits for
JOIN_TIMEOUT_S = 300.0  # and after this long (EFFICIENTVIM_JOIN_TIMEOUT), give up


def init_distributed(device: str | None = None) -> Distributed:
    """Join the process group torchrun describes in the environment (gloo on CPU, nccl on CUDA). Variables that
    describe no run are refused in one line; waiting for the other processes is said after ``JOIN_NOTICE_S`` and
    given up, with a message and exit code 2, after ``EFFICIENTVIM_JOIN_TIMEOUT`` seconds (default 300)."""
    world, rank, local_rank = _env_int("WORLD_SIZE", 1), _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if world < 1 or not 0 <= rank < world or local_rank < 0:
        raise DistributedSetupError(f"RANK={rank} with WORLD_SIZE={world} describes no run: each of WORLD_SIZE "
                                    "processes has a RANK from 0 to WORLD_SIZE-1 (torchrun sets both)")
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if world > 1 and not os.environ.get(v)]
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise DistributedSetupError(
            f"WORLD_SIZE={world} asks for {world} processes, but {', '.join(missing)} {verb} not set: start the run "
            f"with torchrun (torchrun --nproc-per-node={world} -m efficientvim train ...), or unset WORLD_SIZE to "
            "train in one process")
    use_cuda = torch.cuda.is_available() if device is None else device.startswith("cuda")
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
        with _bounded_wait(f"rank {rank} waits for all {world} processes (WORLD_SIZE) to join at {where}"):
            dist.init_process_group("nccl" if use_cuda else "gloo")
    return Distributed(rank, world, local_rank, dev)


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise DistributedSetupError(f"{name}={text!r} is not a whole number: torchrun sets it; unset it to train "
                                    "in one process") from None


@contextlib.contextmanager
def _bounded_wait(what: str) -> Iterator[None]:
    """Say ``what`` once the wait is long, and end the process with a message when it is too long: joining a
    process group blocks inside torch, where no Python exception can reach it."""
    text = os.environ.get("EFFICIENTVIM_JOIN_TIMEOUT", "")
    try:
        limit = float(text) if text.strip() else JOIN_TIMEOUT_S
    except ValueError:
        raise DistributedSetupError(f"EFFICIENTVIM_JOIN_TIMEOUT={text!r} is not a number of seconds") from None

    def notice() -> None:
        print(f"note: {what} (giving up after {limit:.0f} s)", file=sys.stderr, flush=True)

    def give_up() -> None:
        print(f"efficientvim: error: gave up after {limit:.0f} s: {what}, and they did not come (are the other "
              "processes started, with the same MASTER_ADDR and MASTER_PORT? is WORLD_SIZE right?)",
              file=sys.stderr, flush=True)
        os._exit(2)

    timers = [threading.Timer(min(JOIN_NOTICE_S, limit / 2), notice), threading.Timer(limit, give_up)]
    for t in timers:
        t.daemon = True
        t.start()
    try:
        yield
    finally:
        for t in timers:
            t.cancel()


def close_distributed(d: Distributed) -> None:
    """Leave the process group together: every rank waits for the others, then tears its group down, so
    no rank exits while another still talks to it (an abort at exit on multi-node runs otherwise)."""
    if d.enabled and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def match_grad_strides(model: nn.Module, probe_loss: Callable[[], torch.Tensor]) -> None:
    """Prepare parameters whose gradients come with other strides than theirs, before DDP wraps the model.

    Kernels may return a gradient with any stride on a size-1 axis: a CPU depthwise (C, 1, 3, 3) weight
    gets channels-last strides, a (27, 160, 1) Conv1d weight a stride of 160 on its last axis. The
    memory is the same and autograd accepts it, but DDP lays its gradient buckets out by the
    parameter's strides, compares them exactly and warns ("grad strides do not match bucket view
    strides"). One backward pass of ``probe_loss`` in eval mode (no BatchNorm statistics or random
    numbers used) shows the strides, then the gradients are cleared. Depthwise weights take their
    gradient's channels-last strides (oneDNN's own layout for them); for other weights new strides
    can slow the forward pass, so their mismatch, checked here to be on size-1 axes only, is left to
    DDP's one copy per step and its warning filtered as the false alarm it is.
    """
    was_training = model.training
    model.eval()
    probe_loss().backward()
    model.train(was_training)
    others = False
    for p in model.parameters():
        g = p.grad
        p.grad = None
        if g is None or g.stride() == p.stride() or not _same_layout(g, p):
            continue
        if p.dim() == 4 and p.shape[1] == 1:
            p.data = torch.empty_strided(p.shape, g.stride(), dtype=p.dtype, device=p.device).copy_(p.data)
        else:
            others = True
    if others:
        warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")


def _same_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same memory layout: equal strides on every axis longer than 1, none broadcast (stride 0)."""
    return all(n == 1 or sa == sb for n, sa, sb in zip(a.shape, a.stride(), b.stride())) and 0 not in a.stride()


def all_reduce_sum(values: torch.Tensor, d: Distributed) -> torch.Tensor:
    """Sum ``values`` over all processes, returned on the CPU (unchanged in a single process)."""
    if d.enabled:
        values = values.to(d.device, copy=True)  # nccl reduces CUDA tensors only
        dist.all_reduce(values)
    return values.cpu()


class ResumableSampler(DistributedSampler):
    """DistributedSampler that can start an epoch part-way, skipping the batches already trained on.

    The shuffle depends only on (seed, epoch), so the skipped prefix is the same one the
    interrupted run consumed.
    """

    def __init__(self, dataset, d: Distributed, seed: int) -> None:
        super().__init__(dataset, num_replicas=d.world_size, rank=d.rank, shuffle=True, seed=seed, drop_last=True)
        self.start = 0

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(super().__iter__(), self.start, None)

    def __len__(self) -> int:
        return self.num_samples - self.start
