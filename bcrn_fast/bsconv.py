"""``BSConvU``, vendored from the ``bsconv`` package (``bsconv.pytorch.BSConvU``, v0.4.0, MIT).

Blueprint separable convolution, unconstrained variant: a 1x1 pointwise
convolution (no bias) followed by a depthwise ``k x k`` convolution (one
filter per channel, with bias): ``y = dw(pw(x))``.

Vendored because the GPU machine's image has no ``bsconv`` and no package
index. The class, its constructor signature, submodule names (``pw``, ``bn``,
``dw``), module types and therefore the state-dict keys are the package's own,
so the official BCRN checkpoints load with ``strict=True``;
``tests/test_model.py`` checks it against the real package when installed.
"""

from __future__ import annotations

from typing import Any

from torch import nn

__all__ = ["BSConvU"]


class BSConvU(nn.Sequential):
    """Pointwise ``Conv2d(cin, cout, 1, bias=False)`` then depthwise ``Conv2d(cout, cout, k, groups=cout)``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        with_bn: bool = False,
        bn_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        # pointwise: mixes channels, no bias (the depthwise bias follows)
        self.add_module(
            "pw",
            nn.Conv2d(in_channels, out_channels, kernel_size=(1, 1), stride=1, padding=0, dilation=1, bias=False),
        )
        if with_bn:
            self.add_module("bn", nn.BatchNorm2d(num_features=out_channels, **(bn_kwargs or {})))
        # depthwise: one k x k filter per output channel
        self.add_module(
            "dw",
            nn.Conv2d(
                out_channels,
                out_channels,
                kernel_size=kernel_size,
                stride=stride,
                padding=padding,
                dilation=dilation,
                groups=out_channels,
                bias=bias,
                padding_mode=padding_mode,
            ),
        )
