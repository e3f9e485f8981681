"""Fused drop-in modules and the whole fused network."""

from bcrn_fast.bsconv import BSConvU
from bcrn_fast.fused.base import FusedMixin
from bcrn_fast.fused.model import BCRNFused, fuse_
from bcrn_fast.fused.modules import FusedBCB, FusedBSConv, FusedCCA, FusedConvNeXtBlock, FusedESA
from bcrn_fast.model import BCRN, ESA, BluePrintShortcutBlock, CCALayer, ConvNeXtBlock

# reference class -> fused class, used by fuse_
FUSED_CLASSES = {
    BSConvU: FusedBSConv,
    ConvNeXtBlock: FusedConvNeXtBlock,
    CCALayer: FusedCCA,
    ESA: FusedESA,
    BluePrintShortcutBlock: FusedBCB,
    BCRN: BCRNFused,
}

__all__ = [
    "BCRNFused",
    "FUSED_CLASSES",
    "FusedBCB",
    "FusedBSConv",
    "FusedCCA",
    "FusedConvNeXtBlock",
    "FusedESA",
    "FusedMixin",
    "fuse_",
]
