"""Counters for what a piece of inference costs the host, shared by the benchmarks: ATen operations
dispatched (each a kernel launch on a GPU) and CUDA host–device synchronisations."""

from __future__ import annotations

import warnings

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class OperationCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


class SynchronisationCounter:
    """Counts CUDA synchronisations (torch.cuda's sync debug mode warns on each); None off CUDA."""

    def __init__(self, device: torch.device):
        self.device, self.count = device, None

    def __enter__(self):
        if self.device.type == "cuda":
            self._caught = warnings.catch_warnings(record=True)
            self._log = self._caught.__enter__()
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.set_sync_debug_mode("default")
            self._caught.__exit__(*exc)
            self.count = sum("synchroniz" in str(w.message) for w in self._log)
