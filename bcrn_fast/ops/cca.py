"""CCA fused ops: ``cca_scale`` (statistics + squeeze MLP + sigmoid) and ``channel_scale``.

``cca_scale(x, w1, b1, w2, b2, backend) -> s [N, C] fp32`` computes
``s = σ(W2ᵀ·relu(W1ᵀ·(mean + std) + b1) + b2)`` from the spatial mean and
population std (no epsilon) of each (n, c) of ``x`` in one launch (Chan-merged
partials, fixed merge order, last program finalises; see
``bcrn_fast.kernels.cca``). ``channel_scale(x, s, backend) -> x ⊙ s[n, c]`` is
the standalone apply (a consumer kernel normally multiplies on load).

Weights come from :func:`pack_cca` (fp32: a 64 -> 4 -> 64 MLP on a vector is
no GEMM, so it stays fp32 for every storage dtype).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from bcrn_fast.ops import _common, backends, cuda_ext
from bcrn_fast.validation import InputError

CHANNELS = 64  # C: the main feature width
SQUEEZE = 4  # R: CCA reduction 16
MERGE_BLOCK = 32  # partials merged in parallel per step of the merge tree
# Largest H·W per image: pixel indices and counts are int32 in the kernels, with
# headroom for the last merge step's masked indices (j·UNIT, j < NG + BLOCK_T).
MAX_PIXELS = 2**31 - 2**26


class CCAWeights(NamedTuple):
    """Folded CCA squeeze MLP (all fp32): ``s = σ(W2ᵀ·relu(W1ᵀ·y + b1) + b2)``."""

    w1: Tensor  # [64, 4]  (diag(d1)·pw1)ᵀ
    b1: Tensor  # [4]
    w2: Tensor  # [4, 64]  (diag(d2)·pw2)ᵀ
    b2: Tensor  # [64]


def _fold_bsconv_1x1(conv) -> tuple[Tensor, Tensor]:
    """A k=1 ``BSConvU`` as ``(Wᵀ [cin, cout], b [cout])`` in float64: ``W = diag(d)·pw``."""
    pw = conv.pw.weight.detach().double().flatten(1)  # [cout, cin]
    d = conv.dw.weight.detach().double().flatten()  # [cout]
    b = conv.dw.bias
    b = torch.zeros_like(d) if b is None else b.detach().double()
    return (d[:, None] * pw).t().contiguous(), b


def pack_cca(cca) -> CCAWeights:
    """Fold ``CCALayer.conv_du`` (two k=1 BSConvU) into fp32 ``(w1, b1, w2, b2)``."""
    w1, b1 = _fold_bsconv_1x1(cca.conv_du[0])
    w2, b2 = _fold_bsconv_1x1(cca.conv_du[2])
    return CCAWeights(*(p.float().contiguous() for p in (w1, b1, w2, b2)))


# ----------------------------------------------------------------------------- checks


def check_cca_weights(w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, device: torch.device) -> None:
    c, r = CHANNELS, SQUEEZE
    for p, shape, name in ((w1, (c, r), "w1"), (b1, (r,), "b1"), (w2, (r, c), "w2"), (b2, (c,), "b2")):
        _common.check_tensor(p, f"cca {name}", shape, torch.float32, device, contiguous=True)


def check_op_backend(backend: str, device: torch.device) -> str:
    """An op-level (concrete) backend, checked to be runnable on ``device``."""
    return backends.resolve_backend(backends.check_backend_name(backend, backends.CONCRETE), device)


def _check_cca_scale(x, w1, b1, w2, b2) -> None:
    _common.check_map(x, CHANNELS, "cca_scale input")
    check_pixels(x.shape[2] * x.shape[3], "cca_scale input")
    check_cca_weights(w1, b1, w2, b2, x.device)


def _check_channel_scale(x, s) -> None:
    _common.check_map(x, CHANNELS, "channel_scale input")
    _common.check_tensor(s, "channel_scale s", (x.shape[0], CHANNELS), torch.float32, x.device)


# ----------------------------------------------------------------------------- torch backend


def cca_from_stats(u: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:
    """Torch backend of the CCA statistics + MLP: ``u`` fp32 [N, C, H, W] -> s [N, C] fp32."""
    mean = u.mean(dim=(2, 3))
    std = (u - mean[:, :, None, None]).square().mean(dim=(2, 3)).sqrt()
    hid = torch.relu((mean + std) @ w1 + b1)
    return torch.sigmoid(hid @ w2 + b2).contiguous()


def cca_scale_torch(x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:
    return cca_from_stats(x.float(), w1, b1, w2, b2)


def channel_scale_torch(x: Tensor, s: Tensor) -> Tensor:
    n, c, h, w = x.shape
    y = _common.empty_nhwc(n, c, h, w, x.dtype, x.device)
    y.copy_(x.float() * s[:, :, None, None])
    return y


# ----------------------------------------------------------------------------- triton launchers


def launch_settings(hw: int, channels: int) -> tuple[int, int]:
    """``(BLOCK_P, num_warps)`` for a ``[BLOCK_P, channels]`` tile: the ``CONFIGS`` table of ``kernels/cca.py``
    (ptxas reasons in its rows)."""
    from bcrn_fast.kernels import cca

    return cca.launch_config(hw, channels)


def merge_group(tiles: int, block_t: int = MERGE_BLOCK) -> int:
    """Tiles per group ``G`` of the two-level CCA merge: a multiple of ``block_t`` that minimises the
    dependent merge steps ``cdiv(G, block_t) + cdiv(cdiv(tiles, G), block_t)`` (smallest such G).

    960x540 at BLOCK_P 128: T = 4050 -> G = 64, NG = 64: 2 + 2 = 4 steps (one level: 127).
    """
    best, best_steps = block_t, None
    for k in range(1, _common.cdiv(tiles, block_t) + 1):
        g = k * block_t
        steps = k + _common.cdiv(_common.cdiv(tiles, g), block_t)
        if best_steps is None or steps < best_steps:
            best, best_steps = g, steps
        if k > best_steps:  # the group merge alone already takes longer
            break
    return best


def merge_steps(tiles: int, group: int, block_t: int = MERGE_BLOCK) -> int:
    """Dependent merge steps of the two-level tree: the group merge, then the merge of the group partials."""
    return _common.cdiv(min(group, tiles), block_t) + _common.cdiv(_common.cdiv(tiles, group), block_t)


def check_pixels(hw: int, name: str) -> None:
    """The kernels' int32 pixel indices and counts: ``H·W <= MAX_PIXELS`` per image."""
    if hw > MAX_PIXELS:
        raise InputError(f"{name}: {hw} pixels per image, expected at most {MAX_PIXELS} (int32 pixel counts)")


class CCAWorkspace(NamedTuple):
    """One merge tree's workspace (see :func:`cca_workspace`), good for one launch."""

    partials: Tensor  # fp32 [N·(T + NG)·2·C]: tile partials, then group partials
    counters: Tensor  # int32 [N·(1 + NG)], zero before the launch: per image, then per group


def cca_workspace_size(n: int, tiles: int, group: int) -> tuple[int, int]:
    """``(partials, counters)`` element counts of the merge tree over ``tiles`` tiles in groups of ``group``."""
    groups = _common.cdiv(tiles, group)
    return n * (tiles + groups) * 2 * CHANNELS, n * (1 + groups)


def cca_workspaces(
    blocks: int, n: int, tiles: int, device: torch.device, group: int | None = None
) -> list[CCAWorkspace]:
    """``blocks`` workspaces of the merge tree (:func:`cca_workspace`) from one allocation each of partials
    and counters: one zero fill for all of them (BCRNFused's six ESA/CCA launches per forward)."""
    size_ws, size_cnt = cca_workspace_size(n, tiles, group or merge_group(tiles))
    ws = torch.empty((blocks, size_ws), dtype=torch.float32, device=device)
    cnt = torch.zeros((blocks, size_cnt), dtype=torch.int32, device=device)
    return [CCAWorkspace(ws[k], cnt[k]) for k in range(blocks)]


def cca_workspace(n: int, tiles: int, device: torch.device, group: int | None = None) -> CCAWorkspace:
    """Workspace of the CCA merge tree with ``group`` tiles per group (default :func:`merge_group`).

    fp32 partials: ``[N, T, 2, C]`` per tile, then ``[N, NG, 2, C]`` per group, flat;
    zeroed int32 counters: ``[N]`` per image, then ``[N, NG]`` per group (``NG = cdiv(T, group)``).
    """
    return cca_workspaces(1, n, tiles, device, group)[0]


def cca_scale_triton(
    x: Tensor,
    w1: Tensor,
    b1: Tensor,
    w2: Tensor,
    b2: Tensor,
    block_p: int | None = None,
    block_t: int | None = None,
    group: int | None = None,
) -> Tensor:
    """Launch ``cca_scale_kernel``; ``block_p``/``block_t``/``group`` override the tiling and tree (tests)."""
    from bcrn_fast.kernels.cca import cca_scale_kernel

    n, c, h, w = x.shape
    hw = h * w
    check_pixels(hw, "cca_scale input")
    bp, warps = launch_settings(hw, c)
    bp = block_p or bp
    bt = block_t or MERGE_BLOCK
    tiles = _common.cdiv(hw, bp)
    g = group or merge_group(tiles, bt)
    s = torch.empty((n, c), dtype=torch.float32, device=x.device)
    ws, cnt = cca_workspace(n, tiles, x.device, g)
    with _common.device_guard(x):
        cca_scale_kernel[(tiles, n)](
            x, w1, b1, w2, b2, s, ws, cnt,
            w, hw, tiles, g, n,
            *x.stride(), *s.stride(),
            C=c, R=SQUEEZE, BLOCK_P=bp, BLOCK_T=bt, WIDE_INDEX=_common.needs_wide_index(x),
            num_warps=warps,
        )  # fmt: skip
    return s


def channel_scale_triton(x: Tensor, s: Tensor) -> Tensor:
    from bcrn_fast.kernels.cca import channel_scale_kernel

    n, c, h, w = x.shape
    hw = h * w
    bp, warps = launch_settings(hw, c)
    y = _common.empty_nhwc(n, c, h, w, x.dtype, x.device)
    with _common.device_guard(x):
        channel_scale_kernel[(_common.cdiv(hw, bp), n)](
            x, s, y,
            w, hw,
            *x.stride(), *s.stride(), *y.stride(),
            C=c, BLOCK_P=bp, WIDE_INDEX=_common.needs_wide_index(x, y),
            num_warps=warps,
        )  # fmt: skip
    return y


def cca_scale_cuda(x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:
    """The CUDA-extension kernel (``csrc/cca.cu``): one launch, fixed merge order (deterministic).

    Same contract as :func:`cca_scale_triton` (checked by the op); here only what the CUDA
    kernel adds: addressable strides and H·W below 2^24 (its fp32 pixel counts).
    """
    cuda_ext.check_activation(x, "cca_scale input")
    n, c, h, w = x.shape
    if h * w >= 2**24:
        raise InputError(f"cca_scale input: H·W = {h * w} must be below 2^24 for the CUDA cca_scale")
    w1, b1, w2, b2 = (p.contiguous() for p in (w1, b1, w2, b2))
    s = torch.empty((n, c), dtype=torch.float32, device=x.device)
    mod, device, stream = cuda_ext.launch_target(x)
    blocks = mod.cca_blocks(h * w)
    partials = torch.empty((n, blocks, c, 3), dtype=torch.float32, device=x.device)
    counters = torch.zeros((n,), dtype=torch.int32, device=x.device)
    mod.cca_scale(
        dtype=cuda_ext.DTYPE_CODES[x.dtype], x=x.data_ptr(), sx=x.stride(),
        w1=w1.data_ptr(), b1=b1.data_ptr(), w2=w2.data_ptr(), b2=b2.data_ptr(), s=s.data_ptr(), ss=s.stride(),
        partials=partials.data_ptr(), counters=counters.data_ptr(),
        N=n, C=c, R=w1.shape[1], H=h, W=w, blocks=blocks, device=device, stream=stream,
    )  # fmt: skip
    return s


# One implementation per concrete backend, one signature per table. channel_scale has
# no CUDA kernel: under "cuda" it runs its Triton kernel.
CCA_SCALE_IMPLS = {"torch": cca_scale_torch, "triton": cca_scale_triton, "cuda": cca_scale_cuda}
CHANNEL_SCALE_IMPLS = {"torch": channel_scale_torch, "triton": channel_scale_triton, "cuda": channel_scale_triton}


# ----------------------------------------------------------------------------- registered ops


@torch.library.custom_op("bcrn_fast::cca_scale", mutates_args=())
def cca_scale_op(x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor, backend: str) -> Tensor:
    """``s[n, c] = σ(W2ᵀ·relu(W1ᵀ·(mean + std)(x[n]) + b1) + b2)``, fp32 ``[N, 64]``."""
    _check_cca_scale(x, w1, b1, w2, b2)
    return CCA_SCALE_IMPLS[check_op_backend(backend, x.device)](x, w1, b1, w2, b2)


@cca_scale_op.register_fake
def _cca_scale_fake(x, w1, b1, w2, b2, backend):
    backends.check_backend_name(backend, backends.CONCRETE)
    _check_cca_scale(x, w1, b1, w2, b2)
    return x.new_empty((x.shape[0], x.shape[1]), dtype=torch.float32)


@torch.library.custom_op("bcrn_fast::channel_scale", mutates_args=())
def channel_scale_op(x: Tensor, s: Tensor, backend: str) -> Tensor:
    """``y = x ⊙ s[n, c]`` in x's dtype, channels-last."""
    _check_channel_scale(x, s)
    return CHANNEL_SCALE_IMPLS[check_op_backend(backend, x.device)](x, s)


@channel_scale_op.register_fake
def _channel_scale_fake(x, s, backend):
    backends.check_backend_name(backend, backends.CONCRETE)
    _check_channel_scale(x, s)
    n, c, h, w = x.shape
    return _common.empty_nhwc(n, c, h, w, x.dtype, x.device)


# ----------------------------------------------------------------------------- entry points


def cca_scale(x: Tensor, pack: CCAWeights, backend: str = "auto") -> Tensor:
    """``bcrn_fast::cca_scale`` with the weights of a :class:`CCAWeights` (``backend="auto"`` resolved)."""
    backend = backends.resolve_backend(backend, x.device)
    return torch.ops.bcrn_fast.cca_scale(x, pack.w1, pack.b1, pack.w2, pack.b2, backend)


def channel_scale(x: Tensor, s: Tensor, backend: str = "auto") -> Tensor:
    """``bcrn_fast::channel_scale``: ``x ⊙ s[n, c]`` (``backend="auto"`` resolved)."""
    return torch.ops.bcrn_fast.channel_scale(x, s, backends.resolve_backend(backend, x.device))
