"""bcrn_fast: fused Triton/CUDA kernels for the BCRN super-resolution network.

- :class:`BCRN` — the reference network (the official module tree and state dict);
- :class:`BCRNFused` — the same network on fused kernels (same state dict);
- :func:`fuse_` — swap fused modules into a live reference model, sharing weights;
- :func:`load_checkpoint` / :func:`save_checkpoint` — official ``.pth`` and ``.safetensors``;
- :func:`tiled_forward` — exact tiled inference: any image size in bounded device memory;
- :func:`graphed` — CUDA-graph replay of a model, one capture per input signature.
"""

from bcrn_fast.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from bcrn_fast.fused import (
    BCRNFused,
    FusedBCB,
    FusedBSConv,
    FusedCCA,
    FusedConvNeXtBlock,
    FusedESA,
    fuse_,
)
from bcrn_fast.graphs import graphed
from bcrn_fast.model import BCRN
from bcrn_fast.validation import InputError

__all__ = [
    "BCRN",
    "BCRNFused",
    "CheckpointError",
    "FusedBCB",
    "FusedBSConv",
    "FusedCCA",
    "FusedConvNeXtBlock",
    "FusedESA",
    "InputError",
    "fuse_",
    "graphed",
    "load_checkpoint",
    "save_checkpoint",
    "tiled_forward",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    # imported on first use, so that ``python -m bcrn_fast.tiling`` does not import the module twice
    if name == "tiled_forward":
        from bcrn_fast.tiling import tiled_forward

        return tiled_forward
    raise AttributeError(f"module 'bcrn_fast' has no attribute {name!r}")
