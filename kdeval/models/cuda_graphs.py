"""A network's inference forward as CUDA graphs, one per input shape, replayed instead of launched
operation by operation (`--cuda-graphs`, off by default).

An R50's inference on a fast GPU is host-bound: its kernels take less time than the host needs to
launch them, one call being near a thousand operations, about half of them the backbone, FPN and
head, each a launch through PyTorch's dispatcher (benchmarks/RESULTS.md). A CUDA graph records those
launches once and replays them with one call. kdeval graphs only that pure,
synchronisation-free middle (`BatchedRetinaNet.backbone_and_head`); the transform before it and the
postprocessing after it, which read counts back to the host, stay eager.

A graph replays fixed memory, so it is made per input shape (and dtype, strides and autocast state):
a shape is captured the second time it is seen (the first run is eager and doubles as warm-up), and at
most `max_graphs` shapes are kept per model, which bounds the memory; further shapes run eagerly,
as does anything outside torch.inference_mode. The graphs of one model share one memory pool: their
intermediates reuse the same blocks, which is safe because the graphs replay one at a time on one
stream and each replay's outputs are cloned before the next replay (the caller may hold them across
later batches, as engine/predict.OverlappedPostprocessing does).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from kdeval.errors import KdevalError

Capture = Callable[[Callable[[Tensor], Any], Tensor, Any], Callable[[Tensor], Any]]


@dataclass(frozen=True)
class SharedCapture:
    """What the graphs of one network share: a memory pool, and the stream they are captured on (PyTorch
    asks for the same stream where captures share a pool; one of the network's device, where
    torch.cuda.graph's own stream belongs to whichever device was current when it was first made)."""

    pool: Any
    stream: torch.cuda.Stream

    @classmethod
    def on(cls, device: torch.device) -> "SharedCapture":
        return cls(torch.cuda.graph_pool_handle(), torch.cuda.Stream(device))


def capture_cuda_graph(function: Callable[[Tensor], Any], example: Tensor, shared: SharedCapture) -> Callable[[Tensor], Any]:
    """Capture `function` (pure, no host synchronisation) on an input like `example` into a CUDA graph
    in `shared`'s pool; returns replay(batch) → the graph's static outputs, which the next replay of
    any graph of the pool may overwrite.

    The warm-up runs on a side stream, as PyTorch's CUDA-graph notes ask. Autocast's cache of cast
    weights is off during capture: cached casts are freed when the caller's autocast context ends,
    while the graph would go on reading them, so the casts are recorded into the graph instead.
    Capture errors are confined to this thread, so the DataLoader's pin-memory thread may allocate
    pinned memory meanwhile."""
    device = example.device
    precision = {"enabled": torch.is_autocast_enabled("cuda"), "dtype": torch.get_autocast_dtype("cuda")}
    with torch.cuda.device(device):
        static_input = torch.empty_strided(example.shape, example.stride(), dtype=example.dtype, device=device)
        static_input.copy_(example)
        current = torch.cuda.current_stream(device)
        warm_up = torch.cuda.Stream(device)
        warm_up.wait_stream(current)
        with torch.cuda.stream(warm_up), torch.autocast("cuda", cache_enabled=False, **precision):
            function(static_input)
        current.wait_stream(warm_up)
        graph = torch.cuda.CUDAGraph()
        failed_inside = None
        try:
            with torch.cuda.graph(graph, pool=shared.pool, stream=shared.stream, capture_error_mode="thread_local"), \
                    torch.autocast("cuda", cache_enabled=False, **precision):
                try:
                    static_outputs = function(static_input)
                except Exception as error:
                    failed_inside = error
                    raise
        except Exception as error:
            # torch.cuda.graph's exit ends the capture before it restores the stream; where an operation
            # failed during capture, ending it fails too, with a generic error that would hide the
            # operation's own, and the capture stream would stay current
            torch.cuda.set_stream(current)
            raise (failed_inside or error)

    def replay(batch: Tensor) -> Any:
        static_input.copy_(batch)
        graph.replay()
        return static_outputs

    return replay


# how each device type captures; the tests add a stand-in for "cpu" with the same static-memory semantics
CAPTURES: dict[str, Capture] = {"cuda": capture_cuda_graph}


def cloned(outputs: Any) -> Any:
    """Every tensor of nested lists, tuples and dicts cloned (strides kept); other values as they are."""
    if isinstance(outputs, Tensor):
        return outputs.clone()
    if isinstance(outputs, dict):
        return type(outputs)((key, cloned(value)) for key, value in outputs.items())
    if isinstance(outputs, (list, tuple)):
        return type(outputs)(cloned(value) for value in outputs)
    return outputs


class GraphedNetwork:
    """`function` (tensor → nested tensors; a method of the model that holds this, kept by a weak
    reference so that the two do not keep each other alive), run through a graph per input shape where
    one is captured, else eagerly; the outputs are the function's either way, and the caller owns them.
    Only under torch.inference_mode: with autograd on a replay would record nothing, and a graph's
    static input, made in inference mode, cannot be written outside it. The graphs read the weights'
    memory as it was at capture: a model moved or cast afterwards needs a new GraphedNetwork."""

    def __init__(self, function: Callable[[Tensor], Any], device: torch.device, max_graphs: int = 8, sightings_to_capture: int = 2) -> None:
        if torch.device(device).type not in CAPTURES:
            raise ValueError(f"no graph capture for device {device}")
        self._function = weakref.WeakMethod(function) if hasattr(function, "__self__") else lambda: function
        self.capture = CAPTURES[torch.device(device).type]
        self.max_graphs = max_graphs
        self.sightings_to_capture = sightings_to_capture
        self.shared = SharedCapture.on(torch.device(device)) if torch.device(device).type == "cuda" else None
        self.graphs: dict[tuple, Callable[[Tensor], Any]] = {}
        self.sightings: dict[tuple, int] = {}
        self.replays = 0

    def __deepcopy__(self, memo) -> None:
        # a copy of a model starts without graphs: these replay the original's weights and memory
        return None

    @staticmethod
    def key(batch: Tensor) -> tuple:
        device_type = batch.device.type
        precision = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None  # None: no autocast
        return tuple(batch.shape), batch.stride(), batch.dtype, batch.device, precision

    def __call__(self, batch: Tensor) -> Any:
        function = self._function()
        if torch.is_grad_enabled() or not torch.is_inference_mode_enabled():
            return function(batch)
        key = self.key(batch)
        replay = self.graphs.get(key)
        if replay is None:
            self.sightings[key] = self.sightings.get(key, 0) + 1
            if self.sightings[key] < self.sightings_to_capture or len(self.graphs) >= self.max_graphs:
                return function(batch)
            try:
                replay = self.graphs[key] = self.capture(function, batch, self.shared)
            except Exception as error:
                raise KdevalError(f"capturing the network as a CUDA graph failed ({type(error).__name__}: {error}); "
                                  "run without --cuda-graphs") from error
        self.replays += 1
        return cloned(replay(batch))
