"""bcrn_fast: fused Triton/CUDA kernels for the BCRN super-resolution network.

- :class:`BCRN` — the reference network (the official module tree and state dict);
- :class:`BCRNFused` — the same network on fused kernels (same state dict);
- :func:`fuse_` — swap fused modules into a live reference model, sharing weights;
- :func:`load_checkpoint` / :func:`save_checkpoint` — official ``.pth`` and ``.safetensors``.
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
    "load_checkpoint",
    "save_checkpoint",
]
__version__ = "0.1.0"
