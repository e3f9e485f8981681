"""Input checks shared by every public entry point.

Each check raises with a message that names what was expected and what came.
They only look at metadata (shape, dtype, device), never at values, so they
cost nothing on the GPU and are safe inside CUDA-graph capture and
``torch.compile``. ``check_finite`` is the exception and is used only at the
user-facing image boundary (CLI, :func:`bcrn_fast.upscale`).
"""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


class InputError(ValueError):
    """A tensor or image that a BCRN module cannot take."""


def check_feature_map(
    x: torch.Tensor,
    weight: torch.Tensor,
    channels: int,
    name: str = "input",
    min_size: int = 1,
) -> None:
    """Check ``x`` is a ``[N, channels, H, W]`` float map on ``weight``'s device and dtype."""
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise InputError(f"{name}: expected a 4-D tensor [N, {channels}, H, W], got shape {tuple(x.shape)}")
    if x.shape[1] != channels:
        raise InputError(f"{name}: expected {channels} channels (dim 1), got shape {tuple(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise InputError(f"{name}: expected a floating dtype {FLOAT_DTYPES}, got {x.dtype}")
    if x.device != weight.device:
        raise InputError(f"{name} is on {x.device} but the module's weights are on {weight.device}; move one of them")
    if x.dtype != weight.dtype:
        raise InputError(f"{name} has dtype {x.dtype} but the module's weights are {weight.dtype}; cast one of them")
    if x.shape[0] == 0:
        raise InputError(f"{name}: empty batch (shape {tuple(x.shape)})")
    h, w = x.shape[2], x.shape[3]
    if h < min_size or w < min_size:
        raise InputError(
            f"{name}: spatial size {h}x{w} is below the minimum {min_size}x{min_size} "
            "(ESA's stride-2 3x3 conv followed by a 7x7/3 max-pool needs at least 15x15 pixels); "
            "pad the image (e.g. reflect-pad) to at least that size"
        )


def check_image_batch(x: torch.Tensor, weight: torch.Tensor, min_size: int = 15) -> None:
    """Check a model input: ``[N, 3, H, W]``, H, W >= ``min_size``, matching ``weight``."""
    check_feature_map(x, weight, 3, name="image batch", min_size=min_size)


def check_finite(x: torch.Tensor, name: str = "input") -> None:
    """Raise if ``x`` holds NaN or Inf (forces a device sync: boundary use only)."""
    if not bool(torch.isfinite(x).all()):
        raise InputError(f"{name} contains NaN or Inf values; BCRN expects finite RGB values in [0, 1]")
