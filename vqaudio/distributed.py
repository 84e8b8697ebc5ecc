"""Where and how training runs: the device, mixed precision, compilation, and the process group
when ``torchrun`` launched several processes.

Under ``torchrun --nproc_per_node N -m vqaudio train RECIPE`` every process runs the same
training; :func:`runtime` joins the process group (gloo on CPU, nccl on CUDA) that torchrun's
environment describes, and the returned :class:`Runtime` says which rank this process is.
Only rank 0 logs, writes TensorBoard and writes files; DistributedDataParallel averages the
gradients and the quantizer all-reduces its EMA statistics, so every rank holds the same model.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.distributed as dist

from vqaudio.errors import VqaudioError

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class Runtime:
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    rank: int = 0
    world_size: int = 1
    bf16: bool = False  # autocast the model's forward to bfloat16 (the quantizer stays float32)
    compile: bool = False  # torch.compile the model
    workers: int = 0  # DataLoader worker processes

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self):
        if not self.bf16:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def agree(self, finite: bool, stop: bool) -> tuple[bool, bool]:
        """One all-reduce per step: the step counts only if its loss and gradients were finite on
        every rank, and training stops when any rank was asked to (Ctrl-C, SIGTERM), so all
        ranks take the same branch and none waits for a collective the others skipped."""
        if not self.distributed:
            return finite, stop
        flags = torch.tensor([0.0 if finite else 1.0, 1.0 if stop else 0.0], device=self._comm_device)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
        return flags[0].item() == 0, flags[1].item() > 0

    def mean(self, scalars: dict[str, float]) -> dict[str, float]:
        """Logged training scalars averaged over the ranks (each saw its share of the batch)."""
        if not self.distributed or not scalars:
            return scalars
        values = torch.tensor(list(scalars.values()), dtype=torch.float64, device=self._comm_device)
        dist.all_reduce(values)
        return dict(zip(scalars, (values / self.world_size).tolist()))

    def describe(self) -> str:
        where = f"{self.world_size} processes ({dist.get_backend()})" if self.distributed else "1 process"
        return (f"training on {where}, device {self.device}, "
                f"{'bf16 autocast' if self.bf16 else 'float32'}{', compiled' if self.compile else ''}")

    @property
    def _comm_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` is CUDA when torch sees a GPU, else the CPU; under torchrun each process of a
    machine takes its own GPU (LOCAL_RANK)."""
    if name not in DEVICES:
        raise VqaudioError(f"--device must be one of {', '.join(DEVICES)}, not {name!r}")
    available = torch.cuda.is_available()
    if name == "cuda" and not available:
        raise VqaudioError("--device cuda: torch sees no CUDA GPU on this machine "
                           "(torch.cuda.is_available() is False); use --device cpu or auto")
    if name == "cpu" or not available:
        return torch.device("cpu")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def default_workers(device: torch.device, local_world_size: int) -> int:
    """DataLoader workers: none on the CPU, where they would take cores from the training
    itself; on a GPU a few per process, so batches are ready while the GPU computes."""
    if device.type != "cuda":
        return 0
    return max(1, min(4, (os.cpu_count() or 1) // max(1, local_world_size) - 1))


def is_main_process() -> bool:
    """Rank 0, or the only process: the one that prints, logs and writes."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return os.environ.get("RANK", "0") == "0"


def say(message: str) -> None:
    """A progress or warning line on stderr, from rank 0 only."""
    if is_main_process():
        print(message, file=sys.stderr, flush=True)


@contextmanager
def runtime(device: str = "auto", precision: str = "auto", compile: bool = False,
            workers: int | None = None) -> Iterator[Runtime]:
    """The runtime of one training: this process's device and rank. Under torchrun (WORLD_SIZE
    > 1 in the environment) it joins the process group for the whole block and leaves it after."""
    if precision not in PRECISIONS:
        raise VqaudioError(f"--precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if workers is not None and workers < 0:
        raise VqaudioError(f"--workers must be 0 or more, not {workers}")
    world = _env_int("WORLD_SIZE", 1)
    local_rank = _env_int("LOCAL_RANK", 0)
    dev = resolve_device(device, local_rank)
    bf16 = precision == "bf16" or (precision == "auto" and dev.type == "cuda")
    if workers is None:
        workers = default_workers(dev, _env_int("LOCAL_WORLD_SIZE", 1))
    settings = dict(device=dev, bf16=bf16, compile=compile, workers=workers)
    if world <= 1 or (dist.is_available() and dist.is_initialized()):
        rank = dist.get_rank() if world > 1 else 0
        yield Runtime(rank=rank, world_size=world, **settings)
        return
    if not dist.is_available():
        raise VqaudioError("this torch build has no torch.distributed; train with one process")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    dist.init_process_group(backend)
    try:
        yield Runtime(rank=dist.get_rank(), world_size=dist.get_world_size(), **settings)
    finally:
        dist.destroy_process_group()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    try:
        return int(value) if value else default
    except ValueError:
        raise VqaudioError(f"the environment variable {name}={value!r} is not a number; "
                           "launch several processes with torchrun") from None


class NullWriter:
    """What ranks other than 0 log to: nothing (same methods as a SummaryWriter)."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None
