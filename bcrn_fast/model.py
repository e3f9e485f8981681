"""Reference BCRN: the official network, module for module.

This file is the executable specification every fused kernel is tested
against. Module names, parameter shapes and state-dict keys equal those of the
authors' code (github.com/kptx666/BCRN), so the official checkpoints load with
``strict=True``. Keep it readable: no fusion, no tricks.

Shapes: ``x`` is ``[N, 3, H, W]`` RGB in [0, 1]; the output is
``[N, 3, s*H, s*W]`` and is not clamped.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bcrn_fast.bsconv import BSConvU
from bcrn_fast.validation import check_image_batch

SCALES = (2, 3, 4)
NUM_FEATURES = 64
NUM_BLOCKS = 6
MIN_SIZE = 15  # ESA: stride-2 3x3 conv then a 7x7/3 max-pool needs >= 15x15


def bsconv3(cin: int, cout: int) -> BSConvU:
    """``BSConv(cin, cout, 3)`` of the paper: ``BSConvU(cin, cout, 3, padding=1)``."""
    return BSConvU(cin, cout, kernel_size=3, padding=1)


class ConvNeXtBlock(nn.Module):
    """Official ``Blocks``: ``x + r2(GELU(r1(dw3x3(x))))``, no normalisation."""

    def __init__(self, channels: int = NUM_FEATURES, expansion: int = 4) -> None:
        super().__init__()
        hidden = channels * expansion
        self.c1_d_3 = nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=True)
        self.c1_r_1 = nn.Conv2d(channels, hidden, 1, bias=True)
        self.c1_r_2 = nn.Conv2d(hidden, channels, 1, bias=True)
        self.act = nn.GELU()  # exact (erf) GELU

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.c1_r_2(self.act(self.c1_r_1(self.c1_d_3(x))))


class ESA(nn.Module):
    """Enhanced Spatial Attention with BSConvU everywhere (f = channels / 4).

    ``m = sigmoid(conv4(up(conv3_(relu(conv3(relu(conv_max(maxpool(conv2(c1_))))))))
    + conv_f(c1_)))`` with ``c1_ = conv1(x)``; returns ``x * m``.
    """

    def __init__(self, channels: int = NUM_FEATURES) -> None:
        super().__init__()
        f = channels // 4
        self.conv1 = BSConvU(channels, f, kernel_size=1)
        self.conv_f = BSConvU(f, f, kernel_size=1)
        self.conv_max = BSConvU(f, f, kernel_size=3, padding=1)
        self.conv2 = BSConvU(f, f, kernel_size=3, stride=2, padding=0)
        self.conv3 = BSConvU(f, f, kernel_size=3, padding=1)
        self.conv3_ = BSConvU(f, f, kernel_size=3, padding=1)
        self.conv4 = BSConvU(f, channels, kernel_size=1)
        self.sigmoid = nn.Sigmoid()
        self.relu = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c1_ = self.conv1(x)
        c1 = self.conv2(c1_)
        v_max = F.max_pool2d(c1, kernel_size=7, stride=3)
        v_range = self.relu(self.conv_max(v_max))
        c3 = self.relu(self.conv3(v_range))
        c3 = self.conv3_(c3)
        c3 = F.interpolate(c3, (x.size(2), x.size(3)), mode="bilinear", align_corners=False)
        cf = self.conv_f(c1_)
        c4 = self.conv4(c3 + cf)
        return x * self.sigmoid(c4)


def mean_channels(x: torch.Tensor) -> torch.Tensor:
    """Spatial mean per (n, c), shape ``[N, C, 1, 1]``."""
    return x.mean(dim=(2, 3), keepdim=True)


def stdv_channels(x: torch.Tensor) -> torch.Tensor:
    """Spatial population standard deviation per (n, c), no epsilon."""
    mean = mean_channels(x)
    return (x - mean).pow(2).mean(dim=(2, 3), keepdim=True).sqrt()


class CCALayer(nn.Module):
    """Contrast-aware channel attention: ``x * sigmoid(up(relu(down(std + mean))))``."""

    def __init__(self, channels: int = NUM_FEATURES, reduction: int = 16) -> None:
        super().__init__()
        self.conv_du = nn.Sequential(
            BSConvU(channels, channels // reduction, kernel_size=1),
            nn.ReLU(inplace=False),
            BSConvU(channels // reduction, channels, kernel_size=1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = stdv_channels(x) + mean_channels(x)
        return x * self.conv_du(y)


class BluePrintShortcutBlock(nn.Module):
    """One BCB: ``cca(esa(convNextBlock(conv(x))))``; no outer skip connection."""

    def __init__(self, channels: int = NUM_FEATURES) -> None:
        super().__init__()
        self.conv = bsconv3(channels, channels)
        self.convNextBlock = ConvNeXtBlock(channels)
        self.esa = ESA(channels)
        self.cca = CCALayer(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        x = self.convNextBlock(x)
        x = self.esa(x)
        return self.cca(x)


def make_upsampler(channels: int, scale: int, out_channels: int = 3) -> nn.Sequential:
    """``Sequential(pw 1x1, depthwise 3x3 + bias, PixelShuffle)`` (keys ``0``, ``1``)."""
    c = out_channels * scale * scale
    return nn.Sequential(
        nn.Conv2d(channels, c, 1, bias=False),
        nn.Conv2d(c, c, 3, padding=1, groups=c, bias=True),
        nn.PixelShuffle(scale),
    )


class BCRN(nn.Module):
    """The official BCRN (Scientific Reports 2024), 289,232 parameters at x4.

    ``forward(x)`` takes ``[N, 3, H, W]`` float RGB in [0, 1] with H, W >= 15 and
    returns the unclamped ``[N, 3, s*H, s*W]`` super-resolved image.
    """

    def __init__(self, scale: int = 4, num_features: int = NUM_FEATURES, num_blocks: int = NUM_BLOCKS) -> None:
        super().__init__()
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
        self.scale = scale
        self.num_blocks = num_blocks
        self.conv1 = bsconv3(3, num_features)
        for k in range(1, num_blocks + 1):
            self.add_module(f"convNext{k}", BluePrintShortcutBlock(num_features))
        self.conv2 = bsconv3(num_features * num_blocks, num_features)
        self.upsample_block = make_upsampler(num_features, scale)
        self.activation = nn.GELU()

    def blocks(self) -> list[BluePrintShortcutBlock]:
        return [getattr(self, f"convNext{k}") for k in range(1, self.num_blocks + 1)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_image_batch(x, self.conv1.pw.weight, min_size=MIN_SIZE)
        f0 = self.conv1(x)
        feats = []
        f = f0
        for block in self.blocks():
            f = block(f)
            feats.append(f)
        g = self.activation(self.conv2(torch.cat(feats, dim=1)))
        return self.upsample_block(g + f0)
