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
from bcrn_fast.model import BCRN, ESA, NUM_FEATURES, BluePrintShortcutBlock, CCALayer, ConvNeXtBlock, bsconv3

__all__ = ["MODULE_TARGETS", "TARGETS", "Target", "load_weights", "resolve_weights_file"]


@dataclass(frozen=True)
class Target:
    """One benchmarkable network or module."""

    name: str
    fused_class: str  # attribute of bcrn_fast.fused
    in_channels: int
    factory: Callable[[int], nn.Module]  # scale -> fresh reference module (random init)
    uses_scale: bool
    description: str

    def reference(self, scale: int | None, seed: int) -> nn.Module:
        """A fresh fp32 reference module in eval mode with seeded random weights."""
        torch.manual_seed(seed)
        module = self.factory(scale or 4)
        return module.eval().requires_grad_(False)

    def make_input(self, batch: int, height: int, width: int, seed: int) -> torch.Tensor:
        """A CPU fp32 input: an image-like RGB batch in [0, 1] for the model, N(0, 1) features for a module.

        The image is bicubic-upsampled 1/8-resolution uniform noise plus
        N(0, 0.03^2) detail, clamped: smooth like a photo. Pure per-pixel noise
        is no good with the official weights — the network is ill-conditioned
        there (fp32 eager itself is ~4e-4 away from float64, vs ~3e-7 on this
        input or on Set5), so correct fp32 variants would fail verification.
        """
        gen = torch.Generator().manual_seed(seed)
        if self.name == "model":
            coarse = torch.rand((batch, 3, max(2, height // 8), max(2, width // 8)), generator=gen)
            image = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)
            image = image + 0.03 * torch.randn((batch, 3, height, width), generator=gen)
            return image.clamp_(0.0, 1.0)
        return torch.randn((batch, self.in_channels, height, width), generator=gen)

    def output_pixels(self, height: int, width: int, scale: int | None) -> int:
        """Output pixels per image (HR pixels for the model)."""
        s = scale if self.uses_scale and scale else 1
        return height * width * s * s

    def macs(self, height: int, width: int, scale: int | None, batch: int) -> int:
        if self.name == "model":
            return model_macs(height, width, scale or 4, batch)
        return module_macs(self.name, height, width, batch)


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("model", "BCRNFused", 3, lambda s: BCRN(s), True, "the whole BCRN network"),
        Target(
            "bsconv",
            "FusedBSConv",
            NUM_FEATURES,
            lambda s: bsconv3(NUM_FEATURES, NUM_FEATURES),
            False,
            "BSConv(64, 64, 3): pointwise + depthwise 3x3",
        ),
        Target(
            "convnext",
            "FusedConvNeXtBlock",
            NUM_FEATURES,
            lambda s: ConvNeXtBlock(NUM_FEATURES),
            False,
            "convNextBlock: dw3x3 -> 1x1 64->256 -> GELU -> 1x1 256->64 -> + x",
        ),
        Target(
            "cca",
            "FusedCCA",
            NUM_FEATURES,
            lambda s: CCALayer(NUM_FEATURES),
            False,
            "contrast-aware channel attention (mean + std pooling, squeeze MLP, scale)",
        ),
        Target("esa", "FusedESA", NUM_FEATURES, lambda s: ESA(NUM_FEATURES), False, "enhanced spatial attention"),
        Target(
            "bcb",
            "FusedBCB",
            NUM_FEATURES,
            lambda s: BluePrintShortcutBlock(NUM_FEATURES),
            False,
            "one BCB: cca(esa(convNextBlock(conv(x))))",
        ),
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
    for folder in (path, path / "bcrn_official"):
        candidate = folder / f"best_epoch_x{scale}.pth"
        if candidate.is_file():
            return candidate
    return None


def load_weights(model: nn.Module, path: Path) -> None:
    """Load a BCRN checkpoint into ``model`` (strict), via bcrn_fast.checkpoint when available."""
    try:
        from bcrn_fast.checkpoint import state_dict_from_file

        state = state_dict_from_file(path)
    except ImportError:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = {k.removeprefix("module."): v for k, v in state.items()}
    model.load_state_dict(state, strict=True)
