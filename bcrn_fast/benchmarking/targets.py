"""What can be benchmarked: the whole network or one of its fused building blocks.

A target knows how to build its fp32 reference module (seeded random weights,
or the official checkpoint for the model), how to make inputs, which
``bcrn_fast.fused`` class replaces it, and its FLOP count.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from bcrn_fast.benchmarking.costs import model_macs, module_macs
from bcrn_fast.checkpoint import state_dict_from_file
from bcrn_fast.model import BCRN, ESA, NUM_FEATURES, BluePrintShortcutBlock, CCALayer, ConvNeXtBlock, bsconv3

__all__ = ["MODULE_TARGETS", "TARGETS", "Target", "reference_weights", "resolve_weights_file"]


@dataclass(frozen=True)
class Target:
    """One benchmarkable network or module."""

    name: str
    fused_class: str  # attribute of bcrn_fast.fused
    factory: Callable[[int], nn.Module]  # scale -> fresh reference module (random init)
    description: str

    @property
    def uses_scale(self) -> bool:
        return self.name == "model"

    @property
    def in_channels(self) -> int:
        return 3 if self.name == "model" else NUM_FEATURES

    def reference(self, scale: int | None, seed: int) -> nn.Module:
        """A fresh fp32 reference module in eval mode with seeded random weights."""
        torch.manual_seed(seed)
        return self.factory(scale or 4).eval().requires_grad_(False)

    def make_input(self, batch: int, height: int, width: int, seed: int) -> torch.Tensor:
        """A CPU fp32 input: an image-like RGB batch in [0, 1] for the model, N(0, 1) features for a module.

        The image is bicubic-upsampled 1/8-resolution uniform noise plus
        N(0, 0.03^2) detail, clamped: smooth like a photo. Pure per-pixel noise
        is no good with the official weights — the network is ill-conditioned
        there (fp32 eager itself is ~4e-4 away from float64, vs ~3e-7 on this
        input or on Set5), so correct fp32 variants would fail verification.
        """
        gen = torch.Generator().manual_seed(seed)
        if self.name != "model":
            return torch.randn((batch, self.in_channels, height, width), generator=gen)
        coarse = torch.rand((batch, 3, max(2, height // 8), max(2, width // 8)), generator=gen)
        image = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
        return (image + 0.03 * torch.randn((batch, 3, height, width), generator=gen)).clamp_(0.0, 1.0)

    def output_pixels(self, height: int, width: int, scale: int | None) -> int:
        """Output pixels per image (HR pixels for the model)."""
        s = scale if self.uses_scale and scale else 1
        return height * width * s * s

    def macs(self, height: int, width: int, scale: int | None, batch: int) -> int:
        if self.name == "model":
            return model_macs(height, width, scale or 4, batch)
        return module_macs(self.name, height, width, batch)


C = NUM_FEATURES
TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("model", "BCRNFused", BCRN, "the whole BCRN network"),
        Target("bsconv", "FusedBSConv", lambda s: bsconv3(C, C), "BSConv(64, 64, 3): pointwise + depthwise 3x3"),
        Target(
            "convnext",
            "FusedConvNeXtBlock",
            lambda s: ConvNeXtBlock(C),
            "convNextBlock: dw3x3 -> 1x1 64->256 -> GELU -> 1x1 256->64 -> + x",
        ),
        Target(
            "cca",
            "FusedCCA",
            lambda s: CCALayer(C),
            "contrast-aware channel attention (mean + std pooling, squeeze MLP, scale)",
        ),
        Target("esa", "FusedESA", lambda s: ESA(C), "enhanced spatial attention"),
        Target("bcb", "FusedBCB", lambda s: BluePrintShortcutBlock(C), "one BCB: cca(esa(convNextBlock(conv(x))))"),
    )
}
MODULE_TARGETS = tuple(name for name in TARGETS if name != "model")


def resolve_weights_file(weights: str | os.PathLike[str] | None, scale: int) -> Path | None:
    """The checkpoint to use for ``scale``: ``weights`` itself if a file, ``best_epoch_x{scale}.pth``
    under it (or its ``bcrn_official/``) if a folder; None when absent (random weights then)."""
    if not weights:
        return None
    path = Path(weights)
    if path.is_file():
        return path
    candidates = (folder / f"best_epoch_x{scale}.pth" for folder in (path, path / "bcrn_official"))
    return next((c for c in candidates if c.is_file()), None)


def reference_weights(target: str, scale: int | None, seed: int, weights: str | None) -> tuple[nn.Module, str]:
    """The fp32 reference module of ``target`` and where its weights came from: seeded random, or for the
    model the checkpoint :func:`resolve_weights_file` finds under ``weights`` (loaded strictly)."""
    module = TARGETS[target].reference(scale, seed)
    path = resolve_weights_file(weights, scale or 4) if target == "model" else None
    if path is None:
        return module, f"random(seed={seed})"
    module.load_state_dict(state_dict_from_file(path), strict=True)
    return module, path.name
