"""CUDA graphs as a public feature: capture a model once per input signature, then replay.

A BCRNFused forward is ~36 kernels plus host work per op (argument
checks, packed-weight lookups, Triton's argument binding): at 320×180 the host
time exceeds the GPU time several times over. A CUDA graph records the launches
once and replays them with one host call, so the kernels alone set the pace.

``graphed(model)`` wraps any module whose forward is capturable (BCRNFused on the
triton or cuda backend, the reference BCRN, fused submodules):

- one captured graph per (shape, strides, dtype, device) — a bounded LRU cache
  (``max_graphs``, default 4); the oldest graph and its memory pool go first;
- ``capture_after=k`` runs a signature eagerly on its first ``k - 1`` calls and
  captures on the ``k``-th, so one-off shapes (a folder of photos of different
  sizes, the short last batch of a video) never pay for a capture (warm-up
  forwards + recording); the default 1 captures on the first call;
- each call copies ``x`` into the graph's static input, replays, and returns a
  *copy* of the static output (``clone=False`` returns the static buffer itself,
  which the next replay overwrites) — so in-place changes to the caller's input
  between calls are always seen;
- the weights are baked in by address: in-place edits (``load_state_dict``,
  ``.copy_``) are detected through the parameters' version counters and trigger
  a re-capture; ``reset()`` drops every graph;
- a CPU tensor or a CPU model is an :class:`InputError`: graphs are CUDA-only;
- autograd is not supported: calls run under ``torch.inference_mode()``.

The capture/replay mechanics sit behind a small ``_Capturer`` so the cache,
keying, copy and invalidation logic is tested on the CPU with a stand-in.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
from torch import nn

from bcrn_fast.validation import InputError

__all__ = ["GraphedModule", "graphed"]

Key = tuple[Any, ...]


class _CudaCapturer:
    """Records ``model(static_in)`` into a ``torch.cuda.CUDAGraph`` and replays it."""

    def __init__(self, warmup: int = 2) -> None:
        self.warmup = warmup

    def check_device(self, device: torch.device) -> None:
        if device.type != "cuda":
            raise InputError(
                f"CUDA graphs need CUDA tensors, got a tensor on {device}; "
                "call the model directly on the CPU (graphed() is for CUDA only)"
            )

    def capture(self, model: nn.Module, static_in: torch.Tensor) -> tuple[Any, torch.Tensor]:
        # Warm-up on a side stream (Triton JIT, packed-weight caches, cuDNN plans): nothing
        # that allocates pageable memory or syncs may happen inside the capture.
        side = torch.cuda.Stream(device=static_in.device)
        side.wait_stream(torch.cuda.current_stream(static_in.device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                model(static_in)
        torch.cuda.current_stream(static_in.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = model(static_in)
        return graph, static_out

    def replay(self, graph: Any) -> None:
        graph.replay()


class GraphedModule(nn.Module):
    """``model`` replayed from CUDA graphs; see :func:`graphed`."""

    def __init__(
        self, model: nn.Module, max_graphs: int = 4, clone: bool = True, capturer: Any = None, capture_after: int = 1
    ) -> None:
        super().__init__()
        if not isinstance(max_graphs, int) or max_graphs < 1:
            raise InputError(f"max_graphs must be a positive int, got {max_graphs!r}")
        if not isinstance(capture_after, int) or capture_after < 1:
            raise InputError(f"capture_after must be a positive int, got {capture_after!r}")
        self.model = model
        self.max_graphs = max_graphs
        self.clone = clone
        self.capture_after = capture_after
        # key -> eager calls so far, for signatures not captured yet (bounded like the graphs)
        self._seen: OrderedDict[Key, int] = OrderedDict()
        self._capturer = capturer if capturer is not None else _CudaCapturer()
        # key -> (graph, static_in, static_out)
        self._graphs: OrderedDict[Key, tuple[Any, torch.Tensor, torch.Tensor]] = OrderedDict()
        self._weights_key: tuple[int, ...] | None = None
        self.captures = 0  # how many graphs were recorded (a test and a diagnostics counter)

    @property
    def scale(self) -> Any:
        return getattr(self.model, "scale", None)

    def reset(self) -> None:
        """Drop every captured graph (and its memory); the next call captures again."""
        self._graphs.clear()
        self._seen.clear()
        self._weights_key = None

    def _current_weights_key(self) -> tuple[int, ...]:
        # data_ptr catches .to()/reallocation, _version catches in-place edits.
        out: list[int] = []
        for p in self.model.parameters():
            out.append(p.data_ptr())
            out.append(-1 if p.is_inference() else p._version)
        return tuple(out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise InputError(f"expected a torch.Tensor, got {type(x).__name__}")
        self._capturer.check_device(x.device)
        for p in self.model.parameters():
            self._capturer.check_device(p.device)
            break
        wkey = self._current_weights_key()
        if wkey != self._weights_key:
            self.reset()
            self._weights_key = wkey
        key = (tuple(x.shape), x.stride(), x.dtype, x.device)
        with torch.inference_mode():
            entry = self._graphs.get(key)
            if entry is None:
                calls = self._seen.pop(key, 0) + 1
                if calls < self.capture_after:  # not (yet) worth a capture: run eagerly
                    self._seen[key] = calls
                    while len(self._seen) > 8 * self.max_graphs:
                        self._seen.popitem(last=False)
                    return self.model(x)
                static_in = torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=x.device)
                static_in.copy_(x)
                graph, static_out = self._capturer.capture(self.model, static_in)
                self.captures += 1
                entry = (graph, static_in, static_out)
                self._graphs[key] = entry
                while len(self._graphs) > self.max_graphs:
                    self._graphs.popitem(last=False)
            else:
                self._graphs.move_to_end(key)
            graph, static_in, static_out = entry
            static_in.copy_(x)
            self._capturer.replay(graph)
            return static_out.clone() if self.clone else static_out

    def extra_repr(self) -> str:
        return (
            f"max_graphs={self.max_graphs}, clone={self.clone}, capture_after={self.capture_after}, "
            f"cached={len(self._graphs)}"
        )


def graphed(model: nn.Module, max_graphs: int = 4, clone: bool = True, capture_after: int = 1) -> GraphedModule:
    """Wrap ``model`` so each call replays a CUDA graph captured once per input signature.

    ``model`` must be on a CUDA device and capturable (BCRNFused with the triton or
    cuda backend, or the reference BCRN). ``max_graphs`` bounds the cache of
    captured (shape, strides, dtype) signatures; ``clone=False`` returns the graph's
    static output buffer (valid until the next call) to save a copy. ``capture_after``
    runs each signature eagerly until its ``capture_after``-th call, which captures.
    """
    return GraphedModule(model, max_graphs=max_graphs, clone=clone, capture_after=capture_after)
