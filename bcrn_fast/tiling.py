"""Exact tiled inference: any image size in bounded device memory, same output as ``model(x)``.

BCRN is local except for two global quantities per block: ESA's mask comes from
a stride-2 conv, a 7x7/3 max-pool and a bilinear upsample whose grid is the
whole image's, and CCA scales each channel by the mean and std of the whole
map. :func:`tiled_forward` computes both globally and everything else tile by
tile (derivation, halos, bytes per pass and the memory formula: docs/tiling.md)::

    head   F0 = conv1(x)                                     LR tiles, halo 1
    per block k = 1..6
      front  t2, a = convNext(conv(F_{k-1}))                 LR tiles, halo 2 (t2 -> slot k of U, a -> A)
      pool   v = maxpool_{7,3}(conv2_stride2(a))             pooled tiles; a read on the global 6q grid
      low    c3 = conv3_(relu(conv3(relu(conv_max(v)))))     pooled tiles, halo 3
      apply  u = t2 * sigmoid(conv4(up(c3) + conv_f(...)))   LR tiles, up() in global coordinates;
             CCA mean/std of u Chan-merged over tiles (fixed order) -> s_k
    tail   y = upsampler(GELU(conv2(U * s)) + F0)            LR tiles, halo 2

Full-resolution maps (F0, the 384-channel U, the 16-channel A) live on ``x``'s
device; only tile windows visit ``device``. ``python -m bcrn_fast.tiling --table``
regenerates the exact-vs-blended table of docs/tiling.md.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._python_dispatch import TorchDispatchMode

from bcrn_fast.model import BCRN, MIN_SIZE
from bcrn_fast.validation import InputError, check_image_batch

HALO_HEAD = 1  # conv1 is a 3x3
HALO_FRONT = 2  # BCB conv 3x3, then the ConvNeXt depthwise 3x3
HALO_LOW = 3  # conv_max, conv3, conv3_: three 3x3 on the pooled map
HALO_TAIL = 2  # conv2 3x3, then the upsampler's depthwise 3x3
POOL_STEP = 6  # pooled pixel q reads a-rows [6q, 6q + 15): stride 2 of conv2 times stride 3 of the pool
POOL_SPAN = 15  # 2 * (7 - 1) + 3: the a-rows one pooled pixel depends on
MIN_TILE = 8  # smallest tile the OOM fallback halves down to
ESA_APPLY_MIN = MIN_SIZE  # esa_apply checks its map is >= 15x15; its math is pointwise, so small tiles are padded

Region = tuple[int, int, int, int]  # y0, y1, x0, x1 (half-open)
Progress = Callable[[int, int], None]


# ----------------------------------------------------------------------------- geometry


def _spans(lo: int, hi: int, step: int) -> list[tuple[int, int]]:
    return [(a, min(a + step, hi)) for a in range(lo, hi, step)]


def _grid(region: Region, step: int) -> list[Region]:
    """Row-major tiles of ``region``, each at most ``step`` on a side."""
    y0, y1, x0, x1 = region
    return [(a, b, c, d) for a, b in _spans(y0, y1, step) for c, d in _spans(x0, x1, step)]


def _window(region: Region, halo: int, h: int, w: int) -> Region:
    """``region`` grown by ``halo`` on every side, clipped to the ``h x w`` map (the convs zero-pad outside)."""
    y0, y1, x0, x1 = region
    return max(0, y0 - halo), min(h, y1 + halo), max(0, x0 - halo), min(w, x1 + halo)


def _crop(t: Tensor, r: Region) -> Tensor:
    return t[:, :, r[0] : r[1], r[2] : r[3]]


def _inner(win: Region, r: Region, scale: int = 1) -> tuple[slice, slice]:
    """Slices selecting region ``r`` inside a tensor computed on window ``win`` (times ``scale``)."""
    return (
        slice(scale * (r[0] - win[0]), scale * (r[1] - win[0])),
        slice(scale * (r[2] - win[2]), scale * (r[3] - win[2])),
    )


def pooled_size(h: int, w: int) -> tuple[int, int]:
    """Size of ESA's pooled map: conv2 (3x3, stride 2, valid) then max_pool2d(7, 3)."""
    return ((h - 3) // 2 + 1 - 7) // 3 + 1, ((w - 3) // 2 + 1 - 7) // 3 + 1


def pool_tile(tile: int) -> int:
    """Pooled pixels per side of a pool-pass tile: its a-window (6 t + 9) is at most ``3 * tile``.

    The pool pass holds 16 channels (a and conv2's half-size output) where the LR passes hold
    ~200, so a 3x wider window costs about what an LR tile does (docs/tiling.md).
    """
    return max(1, (3 * tile - (POOL_SPAN - POOL_STEP)) // POOL_STEP)


def low_tile(tile: int) -> int:
    """Pooled pixels per side of a low-res-pass tile: its window (t + 6) is at most ``2 * tile``."""
    return max(1, 2 * tile - 2 * HALO_LOW)


def bilinear_taps(out_lo: int, out_hi: int, out_size: int, in_size: int, device: torch.device):
    """align_corners=False bilinear taps of output rows ``[out_lo, out_hi)`` of an ``in_size -> out_size`` resize.

    src = max((dst + 0.5) * in/out - 0.5, 0) in fp32 (PyTorch's and the kernel's formula, in global
    coordinates), i0 = floor(src), i1 = min(i0 + 1, in - 1), weight of i1 = src - i0.
    Returns ``(i0, i1, lam1)`` with int64 indices and fp32 weights.
    """
    scale = torch.tensor(in_size / out_size, dtype=torch.float32)
    dst = torch.arange(out_lo, out_hi, dtype=torch.float32, device=device)
    src = ((dst + 0.5) * scale.to(device) - 0.5).clamp_min(0.0)
    i0 = src.to(torch.int64).clamp_max(in_size - 1)
    i1 = (i0 + 1).clamp_max(in_size - 1)
    return i0, i1, src - i0.to(torch.float32)


def upsample_window(
    c3: Tensor,
    rows: tuple[int, int],
    cols: tuple[int, int],
    out_hw: tuple[int, int],
    full_hw: tuple[int, int],
    origin: tuple[int, int],
    device: torch.device,
) -> Tensor:
    """Bilinear upsample of the pooled map to ``out_hw``, evaluated only on ``rows x cols`` (fp32).

    ``c3`` is a crop of the pooled map whose top-left pixel is ``origin`` of the ``full_hw`` map.
    """
    (hl, wl), (h, w) = full_hw, out_hw
    iy0, iy1, ly = bilinear_taps(*rows, h, hl, device)
    ix0, ix1, lx = bilinear_taps(*cols, w, wl, device)
    c = c3.to(device=device, dtype=torch.float32)
    iy0, iy1, ix0, ix1 = iy0 - origin[0], iy1 - origin[0], ix0 - origin[1], ix1 - origin[1]
    lx = lx[None, None, None, :]
    ly = ly[None, None, :, None]
    top = c[:, :, iy0]
    bot = c[:, :, iy1]
    # columns first within a row, then rows: (1-ly)((1-lx) v00 + lx v01) + ly((1-lx) v10 + lx v11)
    top = (1.0 - lx) * top[:, :, :, ix0] + lx * top[:, :, :, ix1]
    bot = (1.0 - lx) * bot[:, :, :, ix0] + lx * bot[:, :, :, ix1]
    return (1.0 - ly) * top + ly * bot


def _source_rows(lo: int, hi: int, out_size: int, in_size: int) -> tuple[int, int]:
    """Pooled rows ``[a, b)`` the bilinear taps of output rows ``[lo, hi)`` read."""
    i0, i1, _ = bilinear_taps(lo, hi, out_size, in_size, torch.device("cpu"))
    return int(i0.min()), int(i1.max()) + 1


# ----------------------------------------------------------------------------- per-model tile computations


class _ReferenceOps:
    """Tile computations of the reference :class:`BCRN`: its own modules, applied to windows."""

    needs_a_in_apply = True

    def __init__(self, model: BCRN) -> None:
        self.model = model
        self.blocks = model.blocks()
        self.scale = model.scale
        self.dtype = model.conv1.pw.weight.dtype

    def head(self, x: Tensor) -> Tensor:
        return self.model.conv1(x)

    def front(self, k: int, f: Tensor, s: Tensor | None) -> tuple[Tensor, Tensor]:
        b = self.blocks[k]
        if s is not None:
            f = f * s  # F_{k-1} = u_{k-1} * y_{k-1}, as the previous block's CCA returns it
        t2 = b.convNextBlock(b.conv(f))
        return t2, b.esa.conv1(t2)  # a = c1_ (16 ch)

    def pool(self, k: int, a: Tensor) -> Tensor:
        return F.max_pool2d(self.blocks[k].esa.conv2(a), kernel_size=7, stride=3)

    def low(self, k: int, v: Tensor) -> Tensor:
        e = self.blocks[k].esa
        return e.conv3_(e.relu(e.conv3(e.relu(e.conv_max(v)))))

    def apply(self, k: int, t2: Tensor, a: Tensor | None, up: Tensor) -> Tensor:
        e = self.blocks[k].esa
        return t2 * e.sigmoid(e.conv4(up.to(t2.dtype) + e.conv_f(a)))

    def cca_scale(self, k: int, mean: Tensor, std: Tensor) -> Tensor:
        y = (std + mean).to(self.dtype)[:, :, None, None]
        return self.blocks[k].cca.conv_du(y)  # [N, 64, 1, 1], applied as F_k = u_k * y

    def tail(self, u: Tensor, s: Tensor, f0: Tensor) -> Tensor:
        m = self.model
        return m.upsample_block(m.activation(m.conv2(u * s)) + f0)

    @staticmethod
    def cat_scales(scales: list[Tensor]) -> Tensor:
        return torch.cat(scales, dim=1)


class _FusedOps:
    """Tile computations of :class:`BCRNFused` on its own backend (fused ops on windows).

    The CCA squeeze MLP on the merged statistics (a 64 -> 4 -> 64 vector op)
    runs in plain torch on the packed fp32 weights, as the torch backend does.
    """

    needs_a_in_apply = False

    def __init__(self, model: nn.Module) -> None:
        from bcrn_fast.ops import bsconv as bsconv_op
        from bcrn_fast.ops import esa as esa_op

        self.model = model
        self.blocks = model.blocks()
        self.scale = model.scale
        self.dtype = model.conv1.pw.weight.dtype
        self._bsconv, self._esa = bsconv_op, esa_op
        from bcrn_fast.fused.base import FusedMixin

        with torch.no_grad():  # pack every weight once, before (and outside) the tile loop
            for mod in model.modules():
                if isinstance(mod, FusedMixin):
                    mod._packed(self.dtype)

    def head(self, x: Tensor) -> Tensor:
        return self.model.conv1.run(x)

    def front(self, k: int, f: Tensor, s: Tensor | None) -> tuple[Tensor, Tensor]:
        return self.blocks[k].front(f, s)  # t2 and the ESA pre-map a = pw2·conv1(t2)

    def pool(self, k: int, a: Tensor) -> Tensor:
        e = self.blocks[k].esa
        return self._esa.esa_pool(a, e._packed(a.dtype).esa, backend=e._backend_for(a))

    def low(self, k: int, v: Tensor) -> Tensor:
        return self.blocks[k].esa.low(v)  # the three low-res BSConvs in one launch (zero padding at the window)

    def apply(self, k: int, t2: Tensor, a: Tensor | None, up: Tensor) -> Tensor:
        from bcrn_fast.ops._common import empty_nhwc

        e = self.blocks[k].esa
        n, c, h, w = t2.shape
        # esa_apply upsamples its c3 argument to t2's size; handing it the already globally upsampled
        # window makes that an identity (ratio 1.0: src = dst exactly, weight 0 on the neighbour).
        up = up.to(t2.dtype)
        ph, pw = max(0, ESA_APPLY_MIN - h), max(0, ESA_APPLY_MIN - w)
        if ph or pw:  # the op's 15x15 minimum guards ESA's pooling; this step is pointwise, so pad and crop
            t2, up = F.pad(t2, (0, pw, 0, ph)), F.pad(up, (0, pw, 0, ph))
        out = empty_nhwc(n, c, h + ph, w + pw, t2.dtype, t2.device)
        self._esa.esa_apply(
            t2, up, e._packed(t2.dtype).esa, out, 0, cca=None, precision=e.precision, backend=e._backend_for(t2)
        )
        return out[:, :, :h, :w]

    def cca_scale(self, k: int, mean: Tensor, std: Tensor) -> Tensor:
        w1, b1, w2, b2 = self.blocks[k].cca._packed(self.dtype)
        y = (mean + std).float()
        return torch.sigmoid(torch.relu(y @ w1 + b1) @ w2 + b2).contiguous()  # [N, 64] fp32, scaled on load

    def tail(self, u: Tensor, s: Tensor, f0: Tensor) -> Tensor:
        from bcrn_fast.ops._common import ACT_GELU

        m = self.model
        g = m.conv2.run(u, in_scale=s, residual=f0, act=ACT_GELU)
        return self._bsconv.bsconv_packed(g, m._packed(g.dtype), precision=m.precision, backend=m._backend_for(g))

    @staticmethod
    def cat_scales(scales: list[Tensor]) -> Tensor:
        return torch.cat(scales, dim=1)


def _unwrap(model: nn.Module) -> nn.Module:
    """The module a ``torch.compile`` wrapper holds (tiles run the eager modules on windows)."""
    return getattr(model, "_orig_mod", model)


def _ops_for(model: nn.Module) -> _ReferenceOps | _FusedOps:
    from bcrn_fast.fused import BCRNFused

    if isinstance(model, BCRNFused):
        return _FusedOps(model)
    if isinstance(model, BCRN):
        return _ReferenceOps(model)
    raise InputError(f"tiled_forward: expected a BCRN or BCRNFused model, got {type(model).__name__}")


# ----------------------------------------------------------------------------- CCA statistics


class _ChanStats:
    """Per-(n, c) count, mean and M2 of a map seen tile by tile (fp64, Chan's merge, tiles in fixed order)."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: Tensor | None = None
        self.m2: Tensor | None = None

    def add(self, u: Tensor) -> None:
        x = u.detach().to(torch.float64).flatten(2)
        nb = x.shape[2]
        mb = x.mean(dim=2)
        m2b = (x - mb[:, :, None]).square().sum(dim=2)
        if self.mean is None:
            self.count, self.mean, self.m2 = nb, mb, m2b
            return
        na = self.count
        n = na + nb
        delta = mb - self.mean
        self.mean = self.mean + delta * (nb / n)
        self.m2 = self.m2 + m2b + delta.square() * (na * nb / n)
        self.count = n

    def mean_std(self) -> tuple[Tensor, Tensor]:
        assert self.mean is not None and self.m2 is not None
        return self.mean, (self.m2 / self.count).sqrt()  # population variance, no epsilon


# ----------------------------------------------------------------------------- compute meter (tests, docs)


class ComputeMeter(TorchDispatchMode):
    """Peak bytes of tensors allocated (and still alive) during tile compute.

    Entered only around each tile's computation by :func:`tiled_forward` while
    :func:`measure_compute` is active, so full-resolution host buffers (allocated
    outside tile compute) are not counted. Counts the storages that an operator
    returns and that none of its inputs owns; a fused custom op counts as one
    operator (its outputs, not its internal temporaries).
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self.largest = 0

    def _free(self, nbytes: int) -> None:
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        seen = set()
        for a in torch.utils._pytree.tree_leaves((args, kwargs)):
            if isinstance(a, Tensor):
                seen.add(a.untyped_storage().data_ptr())
        for t in torch.utils._pytree.tree_leaves(out):
            if isinstance(t, Tensor) and t.device.type != "meta":
                st = t.untyped_storage()
                ptr, nbytes = st.data_ptr(), st.nbytes()
                if nbytes and ptr not in seen:
                    seen.add(ptr)
                    self.live += nbytes
                    self.largest = max(self.largest, nbytes)
                    weakref.finalize(st, self._free, nbytes)
        self.peak = max(self.peak, self.live)
        return out


_METER: ComputeMeter | None = None


@contextlib.contextmanager
def measure_compute() -> Iterator[ComputeMeter]:
    """``with measure_compute() as m: tiled_forward(...)``; then ``m.peak`` is the compute-side peak in bytes."""
    global _METER
    meter = ComputeMeter()
    _METER = meter
    try:
        yield meter
    finally:
        _METER = None


# ----------------------------------------------------------------------------- the schedule


class _Tiler:
    def __init__(self, ops: Any, x: Tensor, tile: int, device: torch.device, progress: Progress | None) -> None:
        self.ops, self.x, self.tile, self.device, self.progress = ops, x, tile, device, progress
        self.n, _, self.h, self.w = x.shape
        self.hp, self.wp = pooled_size(self.h, self.w)
        self.host = x.device
        self.pin = self.host.type == "cpu" and device.type == "cuda"
        self.done = 0
        full, pooled = (0, self.h, 0, self.w), (0, self.hp, 0, self.wp)
        block = [(full, _lr_tile), (pooled, pool_tile), (pooled, low_tile), (full, _lr_tile)]
        # every pass in schedule order (head, 4 per block, tail): the progress total is counted from it
        self.plan: list[tuple[Region, Callable[[int], int]]] = [(full, _lr_tile), *block * len(ops.blocks)]
        self.plan.append((full, _lr_tile))
        self.next_pass = 0

    # -- bookkeeping
    def _tiles_left(self, queue_len: int) -> int:
        """Tiles still to run: the current pass's queue plus every later pass at the current tile size."""
        later = sum(len(_grid(r, step(self.tile))) for r, step in self.plan[self.next_pass :])
        return queue_len + later

    def _buffer(self, c: int, h: int, w: int) -> Tensor:
        # [N, H, W, C] storage seen as [N, C, H, W]: channels-last (pinned when tiles go to a GPU)
        t = torch.empty((self.n, h, w, c), dtype=self.ops.dtype, device=self.host, pin_memory=self.pin)
        return t.permute(0, 3, 1, 2)

    def _to_dev(self, t: Tensor) -> Tensor:
        return t.to(self.device, non_blocking=self.pin)

    def _each(self, region: Region, step: Callable[[int], int], body: Callable[[Region], None]) -> None:
        """Run ``body`` on every tile of ``region`` in row-major order.

        A CUDA out-of-memory error halves the tile (for the rest of the forward) and redoes the
        failed tile as smaller tiles; tiles already done are kept (each writes only its own pixels).
        """
        assert self.plan[self.next_pass] == (region, step), "pass run out of schedule order"
        self.next_pass += 1
        queue = deque(_grid(region, step(self.tile)))
        while queue:
            r = queue.popleft()
            side = step(self.tile)
            if r[1] - r[0] > side or r[3] - r[2] > side:  # planned before a halving: split it first
                queue.extendleft(reversed(_grid(r, side)))
                continue
            if self._attempt(r, body):
                self.done += 1
                if self.progress is not None:
                    self.progress(self.done, self.done + self._tiles_left(len(queue)))
                continue
            self.tile //= 2  # after the except block: the failed attempt's tensors are freed by now
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            queue.appendleft(r)

    def _attempt(self, r: Region, body: Callable[[Region], None]) -> bool:
        """Run ``body(r)``; False on a CUDA OOM that a smaller tile may avoid."""
        try:
            if _METER is not None:
                with _METER:
                    body(r)
            else:
                body(r)
        except torch.cuda.OutOfMemoryError as exc:
            if self.tile // 2 < MIN_TILE:
                raise torch.cuda.OutOfMemoryError(
                    f"tiled_forward: out of device memory even at tile {self.tile} (minimum {MIN_TILE}): {exc}"
                ) from None
            return False
        return True

    # -- passes
    def run(self) -> Tensor:
        n, h, w, ops = self.n, self.h, self.w, self.ops
        c = 64
        full, pooled = self.plan[0][0], self.plan[2][0]
        self.f0 = self._buffer(c, h, w)
        self.u = self._buffer(c * len(ops.blocks), h, w)  # slot k: t2 of block k until apply overwrites it with u_k
        self.a = self._buffer(16, h, w)
        self.v = self._buffer(16, self.hp, self.wp)
        self.c3 = self._buffer(16, self.hp, self.wp)
        self._each(full, _lr_tile, self._head)
        scales: list[Tensor] = []
        for k in range(len(ops.blocks)):
            src = self.f0 if k == 0 else self.u[:, c * (k - 1) : c * k]
            slot = self.u[:, c * k : c * (k + 1)]
            stats = _ChanStats()
            self._each(full, _lr_tile, partial(self._front, k, src, slot, scales[-1] if scales else None))
            self._each(pooled, pool_tile, partial(self._pool, k))
            self._each(pooled, low_tile, partial(self._low, k))
            self._each(full, _lr_tile, partial(self._apply, k, slot, stats))
            scales.append(ops.cca_scale(k, *stats.mean_std()))
        sc = ops.scale
        self.out = torch.empty((n, 3, sc * h, sc * w), dtype=ops.dtype, device=self.host, pin_memory=self.pin)
        self._each(full, _lr_tile, partial(self._tail, ops.cat_scales(scales)))
        return self.out

    def _head(self, r: Region) -> None:
        win = _window(r, HALO_HEAD, self.h, self.w)
        y = self.ops.head(self._to_dev(_crop(self.x, win)))
        _crop(self.f0, r).copy_(y[(slice(None), slice(None), *_inner(win, r))])

    def _front(self, k: int, src: Tensor, slot: Tensor, s_prev: Tensor | None, r: Region) -> None:
        win = _window(r, HALO_FRONT, self.h, self.w)
        t2, a = self.ops.front(k, self._to_dev(_crop(src, win)), s_prev)
        ii = (slice(None), slice(None), *_inner(win, r))
        _crop(slot, r).copy_(t2[ii])
        _crop(self.a, r).copy_(a[ii])

    def _pool(self, k: int, r: Region) -> None:
        # pooled rows [q0, q1) read a-rows [6 q0, 6 (q1 - 1) + 15): the global stride-2 / pool-3 grid
        q0, q1, p0, p1 = r
        win = (POOL_STEP * q0, POOL_STEP * (q1 - 1) + POOL_SPAN, POOL_STEP * p0, POOL_STEP * (p1 - 1) + POOL_SPAN)
        _crop(self.v, r).copy_(self.ops.pool(k, self._to_dev(_crop(self.a, win))))

    def _low(self, k: int, r: Region) -> None:
        win = _window(r, HALO_LOW, self.hp, self.wp)
        c3 = self.ops.low(k, self._to_dev(_crop(self.v, win)))
        _crop(self.c3, r).copy_(c3[(slice(None), slice(None), *_inner(win, r))])

    def _apply(self, k: int, slot: Tensor, stats: _ChanStats, r: Region) -> None:
        y0, y1, x0, x1 = r
        ry, rx = _source_rows(y0, y1, self.h, self.hp), _source_rows(x0, x1, self.w, self.wp)
        c3 = self._to_dev(self.c3[:, :, ry[0] : ry[1], rx[0] : rx[1]])
        up = upsample_window(c3, (y0, y1), (x0, x1), (self.h, self.w), (self.hp, self.wp), (ry[0], rx[0]), self.device)
        a = self._to_dev(_crop(self.a, r)) if self.ops.needs_a_in_apply else None
        uk = self.ops.apply(k, self._to_dev(_crop(slot, r)), a, up)
        stats.add(uk)  # statistics of u as stored, like the fused kernels
        _crop(slot, r).copy_(uk)

    def _tail(self, s_all: Tensor, r: Region) -> None:
        win = _window(r, HALO_TAIL, self.h, self.w)
        y = self.ops.tail(self._to_dev(_crop(self.u, win)), s_all, self._to_dev(_crop(self.f0, win)))
        sc = self.ops.scale
        ys, xs = _inner(win, r, sc)
        self.out[:, :, sc * r[0] : sc * r[1], sc * r[2] : sc * r[3]].copy_(y[:, :, ys, xs])


def _lr_tile(tile: int) -> int:
    """LR passes tile with the tile size itself."""
    return tile


# ----------------------------------------------------------------------------- memory model


def _model_kind(model: nn.Module) -> tuple[str, torch.device, torch.dtype]:
    from bcrn_fast.fused import BCRNFused

    model = _unwrap(model)
    p = model.conv1.pw.weight
    if isinstance(model, BCRNFused):
        from bcrn_fast.ops.backends import BackendUnavailable, resolve_backend

        try:
            kind = resolve_backend(model.backend, p.device)
        except BackendUnavailable:  # an estimate for a model that cannot run here is still an estimate
            kind = model.backend
        return kind, p.device, p.dtype
    return "reference", p.device, p.dtype


def _window_bytes_per_pixel(kind: str, dtype: torch.dtype, scale: int) -> float:
    """Peak device bytes per pixel of a tile window: the larger of the front and the tail pass.

    ``e`` = element size, ``o = 3 s^2`` upsampler channels. Stored in the model dtype:
    front = window of F_{k-1} (64) + t1, t2 (64 + 64) + a (16); tail = window of U (384) and F0 (64)
    + G (64) + the upsampled output (o). The fused torch backend adds fp32 scratch (front: z 64, the
    256-wide hidden map three times, y 64; tail: the scaled 384-channel input twice, z, acc and GELU
    64 each, the output twice); the reference BCRN keeps every module's output until the next one
    consumes it (derivation: docs/tiling.md). Triton/CUDA keep their temporaries on chip.
    """
    e = torch.empty((), dtype=dtype).element_size()
    o = 3 * scale * scale
    if kind == "reference":
        front = (64 * 6 + 256 * 2 + 16 * 2) * e
        tail = (384 * 2 + 64 * 5 + 3 * o) * e
    else:
        front = (64 + 64 + 64 + 16) * e
        tail = (384 + 64 + 64 + o) * e
        if kind == "torch":
            front += (64 * 2 + 256 * 3) * 4
            tail += (384 * 2 + 64 * 3 + o * 2) * 4
    return max(front, tail)


def tile_peak_bytes(model: nn.Module, n: int, tile: int, dtype: torch.dtype | None = None) -> int:
    """Estimated peak device memory of :func:`tiled_forward` with ``tile`` (beyond the weights).

    The largest per-tile working set: the tail pass on a ``(tile + 4)^2`` window
    (the 384-channel window of U plus conv2's and the upsampler's outputs) or the
    front pass on a ``(tile + 4)^2`` window; see docs/tiling.md for the formula.
    """
    kind, _, mdt = _model_kind(model)
    model, dtype = _unwrap(model), dtype or mdt
    win = (tile + 2 * HALO_FRONT) ** 2
    return (
        int(n * win * _window_bytes_per_pixel(kind, dtype, model.scale)) + 1024 * 1024
    )  # + scales, statistics, launch workspaces


def whole_image_peak_bytes(model: nn.Module, n: int, h: int, w: int, dtype: torch.dtype) -> int:
    """Estimated peak device memory of ``model(x)`` on a whole ``[n, 3, h, w]`` image of ``dtype``.

    BCRNFused keeps x, F0 and the 384-channel U alive for the whole forward,
    plus per block t1, t2 and a (64 + 64 + 16 ch); the torch backend adds its
    fp32 hidden maps. The reference BCRN keeps F1..F6, their 384-channel
    concatenation and the per-op temporaries of the widest layer.
    """
    kind, _, _ = _model_kind(model)
    e = torch.empty((), dtype=dtype).element_size()
    s2 = _unwrap(model).scale ** 2
    hw = n * h * w
    if kind == "reference":  # x, F0, F1..F6, their concatenation, conv2's two outputs, the upsampler's two
        per = (3 + 64 + 384 + 384 + 2 * 64 + 2 * 3 * s2) * e
    else:
        base = (3 + 64 + 384) * e
        block = (64 + 64 + 16) * e + ((64 * 4 + 256 * 3) * 4 if kind == "torch" else 0)
        tail = (64 + 3 * s2) * e + ((384 * 2 + 64 * 3) * 4 if kind == "torch" else 0)
        per = base + max(block, tail)
    return int(hw * per) + 1024 * 1024


def _free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.9)  # leave room for the allocator's fragmentation
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") * 0.5)
    except (ValueError, OSError, AttributeError):
        return 4 << 30


def auto_tile(model: nn.Module, n: int, h: int, w: int, dtype: torch.dtype, budget: int) -> int:
    """Largest tile (at most the image's longer side) whose :func:`tile_peak_bytes` fits ``budget`` bytes."""
    hi = max(h, w)
    if tile_peak_bytes(model, n, MIN_TILE, dtype) > budget:
        need = tile_peak_bytes(model, n, MIN_TILE, dtype)
        raise InputError(
            f"tile='auto': {budget / 2**20:.1f} MiB of device memory is too little; tile {MIN_TILE} "
            f"needs about {need / 2**20:.1f} MiB"
        )
    lo = MIN_TILE
    while lo < hi:  # largest fitting tile, by bisection (the estimate grows with the tile)
        mid = (lo + hi + 1) // 2
        if tile_peak_bytes(model, n, mid, dtype) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo


# ----------------------------------------------------------------------------- public entry point


def tiled_forward(
    model: nn.Module,
    x: Tensor,
    tile: int | str = 256,
    device: torch.device | str | None = None,
    max_memory: float | None = None,
    progress: Progress | None = None,
) -> Tensor:
    """``model(x)`` computed tile by tile, equal to the whole-image result up to float rounding.

    Args:
        model: a :class:`BCRN` or :class:`BCRNFused` (any backend, dtype).
        x: ``[N, 3, H, W]`` image batch (NCHW or channels-last), H, W >= 15; may live on the CPU
            while the tiles run on ``device``. Cast to the model's dtype.
        tile: LR pixels per tile side (>= 8), or ``"auto"``: the largest tile whose estimated peak
            (:func:`tile_peak_bytes`) fits the free memory of ``device``, or ``max_memory`` bytes.
        device: where tiles run (default: the model's device).
        max_memory: byte budget for ``tile="auto"`` (default: the device's free memory).
        progress: called as ``progress(done, total)`` after each tile of each pass.

    Returns ``[N, 3, s*H, s*W]`` on ``x``'s device in the model's dtype. A CUDA
    out-of-memory error halves the tile and retries the failed tile.
    """
    model = _unwrap(model)
    ops = _ops_for(model)
    wdev = model.conv1.pw.weight.device
    dev = torch.device(device) if device is not None else wdev
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    if dev != wdev:
        raise InputError(
            f"tiled_forward: tiles run on {dev} but the model's weights are on {wdev}; "
            f"move the model there (model.to({str(dev)!r}))"
        )
    if not isinstance(x, Tensor) or x.dim() != 4:
        raise InputError(f"tiled_forward: expected x of shape [N, 3, H, W], got {getattr(x, 'shape', type(x))}")
    if x.dtype != ops.dtype:
        if not x.is_floating_point():
            raise InputError(f"tiled_forward: expected a floating-point image batch, got {x.dtype}")
        x = x.to(ops.dtype)
    check_image_batch(x.to("meta"), model.conv1.pw.weight.to("meta"), min_size=MIN_SIZE)
    n, _, h, w = x.shape
    if isinstance(tile, str):
        if tile != "auto":
            raise InputError(f"tile must be an int >= {MIN_TILE} or 'auto', got {tile!r}")
        if max_memory is not None and (
            isinstance(max_memory, bool) or not isinstance(max_memory, (int, float)) or not max_memory > 0
        ):
            raise InputError(f"max_memory must be a positive number of bytes, got {max_memory!r}")
        budget = int(max_memory) if max_memory is not None else _free_bytes(dev)
        tile = auto_tile(model, n, h, w, ops.dtype, budget)
    elif isinstance(tile, bool) or not isinstance(tile, int) or tile < MIN_TILE:
        raise InputError(f"tile must be an int >= {MIN_TILE} or 'auto', got {tile!r}")
    elif max_memory is not None:
        raise InputError("max_memory applies to tile='auto' only; pass tile='auto' or drop max_memory")
    with torch.no_grad():
        return _Tiler(ops, x, tile, dev, progress).run()


# ----------------------------------------------------------------------------- the docs table


def blended_forward(model: nn.Module, x: Tensor, tile: int, overlap: int) -> Tensor:
    """The conventional approach: overlapping tiles run as independent images, outputs feathered together.

    Tiles of ``tile`` LR pixels (plus ``overlap`` on each side) go through
    ``model`` separately; each output is weighted by a linear ramp over the
    overlap and the weighted sum is normalised (what ComfyUI-style tilers do).
    """
    n, _, h, w = x.shape
    s = model.scale
    acc = torch.zeros((n, 3, s * h, s * w), dtype=torch.float64)
    wsum = torch.zeros((1, 1, s * h, s * w), dtype=torch.float64)
    for y0, y1, x0, x1 in _grid((0, h, 0, w), tile):
        wy0, wy1, wx0, wx1 = _window((y0, y1, x0, x1), overlap, h, w)
        if wy1 - wy0 < MIN_SIZE:
            wy0, wy1 = max(0, wy1 - MIN_SIZE), max(wy1, min(h, wy0 + MIN_SIZE))
        if wx1 - wx0 < MIN_SIZE:
            wx0, wx1 = max(0, wx1 - MIN_SIZE), max(wx1, min(w, wx0 + MIN_SIZE))
        with torch.no_grad():
            y = model(x[:, :, wy0:wy1, wx0:wx1]).double().cpu()

        def ramp(lo: int, hi: int, size: int, n_out: int) -> Tensor:
            # weight rises linearly over the overlap on sides that have a neighbour
            pos = torch.arange(n_out, dtype=torch.float64) + 0.5
            r = torch.ones(n_out, dtype=torch.float64)
            if lo > 0:
                r = torch.minimum(r, pos / (s * overlap))
            if hi < size:
                r = torch.minimum(r, (n_out - pos) / (s * overlap))
            return r.clamp_min(1e-6)

        ry = ramp(wy0, wy1, h, s * (wy1 - wy0))
        rx = ramp(wx0, wx1, w, s * (wx1 - wx0))
        wgt = ry[:, None] * rx[None, :]
        acc[:, :, s * wy0 : s * wy1, s * wx0 : s * wx1] += y * wgt
        wsum[:, :, s * wy0 : s * wy1, s * wx0 : s * wx1] += wgt
    return (acc / wsum).float()


def _psnr(a: Tensor, ref: Tensor) -> float:
    """PSNR (dB) of ``a`` against ``ref`` after clamping to [0, 1] and rounding to 8 bits."""
    qa = (a.clamp(0, 1) * 255).round()
    qr = (ref.clamp(0, 1) * 255).round()
    mse = (qa - qr).double().square().mean().item()
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def _max_steps(y: Tensor, ref: Tensor) -> float:
    q = lambda t: (t.clamp(0, 1) * 255).round()  # noqa: E731
    return (q(y) - q(ref)).abs().max().item()


def _table_images() -> list[tuple[str, Tensor]]:
    """Set5's x4 LR images from the shared data dir, plus scikit-image's bundled photos (area-downscaled 6x)."""
    from bcrn_fast.evaluate import default_data_dir, set5_dirs
    from bcrn_fast.imageio import read_image

    imgs = []
    data = default_data_dir()
    if data is not None:
        _, lr_dir = set5_dirs(data, 4)
        for f in sorted(lr_dir.glob("*.bmp")):
            if f.stem != "baby":  # 128x128: the slowest on a 2-core CPU, and the four others cover Set5's content
                imgs.append((f"Set5 {f.stem}", read_image(f)[0]))
    try:
        from skimage import data as skdata
    except ImportError:
        print("scikit-image not installed: its photos are left out of the table", file=sys.stderr)
        return imgs
    for name in ("astronaut", "coffee", "chelsea"):
        hr = torch.from_numpy(getattr(skdata, name)()).permute(2, 0, 1)[None].float() / 255
        lr = F.avg_pool2d(hr[:, :, : hr.shape[2] // 6 * 6, : hr.shape[3] // 6 * 6], 6)
        imgs.append((f"skimage {name} (1/6)", lr))
    return imgs


def _peak_live_bytes(fn: Callable[[], Tensor]) -> tuple[Tensor, int]:
    with measure_compute() as m:  # whole-image run: meter every op
        with m:
            y = fn()
    return y, m.peak


def make_table(tile: int = 48) -> str:
    """Markdown table: blended tiling (16/32 px overlap) vs exact tiling against whole-image output (x4)."""
    from bcrn_fast.checkpoint import load_checkpoint
    from bcrn_fast.evaluate import default_data_dir

    data = default_data_dir()
    if data is None:
        raise SystemExit("no data dir (set BCRN_DATA_DIR): the official x4 weights are needed")
    model = load_checkpoint(data / "bcrn_official" / "best_epoch_x4.pth", 4)
    rows = [
        f"x4 official weights, fp32, reference BCRN on this CPU ({torch.get_num_threads()} threads), tile {tile}. "
        "PSNR after 8-bit quantisation against the whole-image output; 'max diff' in 8-bit steps; "
        "peak = largest live bytes of tensors made by the forward (exact: its tile compute only).",
        "",
        "| image | LR size | blended 16 px: PSNR / max diff | blended 32 px: PSNR / max diff | exact: rel. error / "
        "max diff | whole: time / peak | exact: time / compute peak |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, x in _table_images():
        print(f"table: {name} {tuple(x.shape[2:])}", file=sys.stderr)
        with torch.no_grad():
            t0 = time.perf_counter()
            ref = model(x)
            t_whole = time.perf_counter() - t0
            _, whole_peak = _peak_live_bytes(lambda: model(x))  # noqa: B023 - called right here
        cells = []
        for ov in (16, 32):
            y = blended_forward(model, x, tile, ov)
            cells.append(f"{_psnr(y, ref):.1f} dB / {_max_steps(y, ref):.0f}")
        t0 = time.perf_counter()
        y = tiled_forward(model, x, tile=tile)
        t_tile = time.perf_counter() - t0
        with measure_compute() as m:  # a second, metered run (the meter slows it down)
            tiled_forward(model, x, tile=tile)
        rel = ((y.double() - ref.double()).norm() / ref.double().norm()).item()
        rows.append(
            f"| {name} | {x.shape[3]}x{x.shape[2]} | {cells[0]} | {cells[1]} | {rel:.1e} / {_max_steps(y, ref):.0f} | "
            f"{t_whole:.2f} s / {whole_peak / 2**20:.0f} MiB | {t_tile:.2f} s / {m.peak / 2**20:.1f} MiB |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bcrn_fast.tiling", description=__doc__.splitlines()[0])
    p.add_argument("--table", action="store_true", help="print the exact-vs-blended table of docs/tiling.md")
    p.add_argument("--tile", type=int, default=48, help="tile size for the table (default 48)")
    args = p.parse_args(argv)
    if not args.table:
        p.print_help()
        return 0
    print(make_table(args.tile))
    return 0


if __name__ == "__main__":
    sys.exit(main())
