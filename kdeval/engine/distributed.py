"""This process's place in a torchrun job, and the few collectives kdeval needs.

Run plainly, a process is rank 0 of 1 and nothing here touches torch.distributed or imports torch, so
that a command which only reads results files never loads torch.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from datetime import timedelta


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> "Distributed":
        return cls(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0)))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int, batch_size: int = 1) -> list[int]:
        """The positions 0..n-1 this rank handles: every world-th batch of `batch_size` consecutive
        positions. Each batch then holds the images one process would batch together, so a model's
        outputs are bit for bit those of one process (on the CPU, convolutions pick their algorithm by
        batch size: other batches differ in the last bits, which GroupNorm can lift into the scores)."""
        starts = range(self.rank * batch_size, n, self.world * batch_size)
        return [position for start in starts for position in range(start, min(start + batch_size, n))]


# How long a rank waits in a collective before the job fails: gloo's default, and NCCL's instead of its
# 10 minutes, since at COCO's size a rank done with its robustness scenarios may wait at the end for
# another's last ones, minutes each where corrupting the images bounds the run (few loader workers
# per GPU on a many-GPU node)
COLLECTIVE_TIMEOUT = timedelta(minutes=30)


def start_distributed(device: str) -> tuple[Distributed, str]:
    """Join the torchrun job (NCCL on GPUs, gloo on CPUs) and pick this rank's GPU."""
    dist_env = Distributed.from_env()
    if dist_env.world == 1:
        return dist_env, device
    import torch

    if device.startswith("cuda"):
        # the rank's GPU before the process group: NCCL's communicators and the tensors all_gather_object
        # sends are made on the current device, which must not be left for NCCL to guess
        device = f"cuda:{dist_env.local_rank}"
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.startswith("cuda") else "gloo", timeout=COLLECTIVE_TIMEOUT)
    return dist_env, device


def _torch_if_joined():
    """torch, where this process is in an initialised process group; else None. A process that never
    imported torch cannot have joined one, so it is not imported here to find out."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch
    return None


def current() -> Distributed:
    """The job as torch.distributed sees it (rank 0 of 1 when it is not initialised)."""
    torch = _torch_if_joined()
    if torch is not None:
        return Distributed(torch.distributed.get_rank(), torch.distributed.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    return Distributed()


def all_gather_lists(items: list) -> list[list]:
    """Every rank's list, in rank order, on every rank (a plain [items] when alone)."""
    dist_env = current()
    if dist_env.world == 1:
        return [items]
    import torch

    gathered: list = [None] * dist_env.world
    torch.distributed.all_gather_object(gathered, items)
    return gathered


def gather_lists(items: list, dst: int = 0) -> list[list] | None:
    """Every rank's list, in rank order, on rank `dst` only (None on the others; [items] when alone)."""
    dist_env = current()
    if dist_env.world == 1:
        return [items]
    import torch

    gathered: list | None = [None] * dist_env.world if dist_env.rank == dst else None
    torch.distributed.gather_object(items, gathered, dst=dst)
    return gathered


def broadcast_from_main(item):
    """Rank 0's `item` on every rank (the item itself when alone)."""
    if current().world == 1:
        return item
    import torch

    box = [item]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if current().world > 1:
        import torch

        torch.distributed.barrier()


def leave() -> None:
    """End this process's part in a torchrun job once the ranks' shared work is done: wait for every
    rank, then destroy the process group (afterwards this process is rank 0 of 1; a second call does
    nothing). Commands call it right after their last collective, so that rank 0 then scores and
    writes alone, as long as it takes, and the CLI calls it again when a command succeeds. Without it
    a rank that exits first can abort at interpreter exit, its gloo threads still alive ("terminate
    called without an active exception"), and torchrun then kills rank 0 mid-write; NCCL wants its
    communicators torn down together. Not called after an error: a rank waiting here for one that
    has failed would hang instead of exiting (the CLI calls `abandon` then)."""
    torch = _torch_if_joined()
    if torch is not None:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


class RankDone(Exception):
    """Raised on a rank other than 0 once its share of a torchrun job is done and the job is left:
    rank 0 alone goes on to score and write. The CLI ends such a rank with exit status 0."""


def continue_on_main_rank() -> None:
    """After a command's last collective: every rank leaves the job together (`leave`), rank 0 returns
    to score and write alone, and the others raise RankDone, having nothing left to do."""
    is_main = current().is_main
    leave()
    if not is_main:
        raise RankDone


# How long a failing rank waits for its gloo process group to be destroyed before it exits anyway
ABANDON_WAIT = timedelta(seconds=10)


def _destroy_quietly() -> None:
    import torch

    try:
        torch.distributed.destroy_process_group()
    except Exception:  # best effort: the rank is failing already, and its own error is what to show
        pass


def abandon() -> None:
    """Leave a torchrun job after an error on this rank, without waiting for the others (they may be
    waiting for this one, or never come). Under gloo the process group is destroyed here, which needs
    no other rank: left to the interpreter's exit, its threads made the failing rank abort instead of
    exiting with its error ("terminate called without an active exception"). Destroying waits for a
    collective this rank had started, until the others join it or exit (an all_reduce in flight holds
    it until the other rank ends), so it runs in a thread given ABANDON_WAIT, and the rank exits after
    that in any case. Under NCCL nothing is done: tearing its communicators down while other ranks are
    inside a collective can hang, and torchrun ends the job when this rank exits."""
    torch = _torch_if_joined()
    if torch is not None and torch.distributed.get_backend() == "gloo":
        import threading

        destroying = threading.Thread(target=_destroy_quietly, name="kdeval-abandon", daemon=True)
        destroying.start()
        destroying.join(ABANDON_WAIT.total_seconds())
