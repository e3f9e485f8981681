"""CCA (contrast-aware channel attention) kernels: statistics, squeeze MLP, scale.

``s[n, :] = sigmoid(W2ᵀ·relu(W1ᵀ·(mean + std) + b1) + b2)`` with the spatial
mean and population std (no epsilon) of each (n, c), in one launch:

1. every program reduces its ``[BLOCK_P, C]`` tile of one image to per-channel
   partials ``(mean_t, M2_t)`` (two passes over the registers, so no
   Σx / Σx² cancellation) and stores them in the workspace; the tile's pixel
   count follows from its index, so it is not stored;
2. a two-level merge tree (:func:`cca_merge_tile`), deterministic whatever the
   order programs finish in. Tiles form groups of ``G`` consecutive tiles, one
   counter per group: the program that bumps its group's counter last merges
   the group's partials in tile order and publishes a group partial, then
   bumps the image's counter; the program that does so last merges the
   ``NG = cdiv(T, G)`` group partials in group order. Both merges are Chan's
   exact combination, ``BLOCK_T`` partials per step in parallel
   (``mean = Σ n_i m_i / Σ n_i``, ``M2 = Σ M2_i + Σ n_i (m_i - mean)²``), the
   steps folded sequentially. Pixel counts are int32 (exact for any image the
   launcher accepts); only the merge weights ``n_c / n`` are fp32 ratios;
3. that last program computes ``mean + sqrt(M2 / HW)``, the 64 -> 4 -> 64 MLP
   and the sigmoid and writes ``s[n, :]`` (fp32).

Dependent merge steps: ``cdiv(G, BLOCK_T) + cdiv(NG, BLOCK_T)``; the launcher
(``bcrn_fast.ops.cca.merge_group``) picks G to minimise it. At 960x540 with
BLOCK_P 128 (T = 4050), BLOCK_T 32 and G 64 (NG 64): 2 + 2 = 4 steps, where a
single merging program needed cdiv(4050, 32) = 127.

Workspace (``bcrn_fast.ops.cca.cca_workspace``), fp32: the tile partials
``[N, T, 2, C]`` followed by the group partials ``[N, NG, 2, C]``; int32
counters, zeroed: ``[N]`` per image followed by ``[N, NG]`` per group.

``cca_tile_partials`` and ``cca_merge_tile`` are shared with the ESA apply
kernel (``esa.py``), which accumulates the CCA statistics of the map it
writes.

Bytes: one read of the map (``N·HW·C`` elements) + ``8·C`` bytes of partials
per tile (+ as much again per group); the merges and the MLP are negligible.
"""

import triton
import triton.language as tl

from . import Config, Rule, natural_tile, pick, pixel_tile


@triton.jit
def cca_tile_partials(x, pmask, count):
    """Per-channel ``(mean_t, M2_t)`` of the valid rows of a ``[BLOCK_P, C]`` fp32 tile.

    ``pmask`` ([BLOCK_P] bool) marks the valid pixels, ``count`` (scalar, >= 1)
    is how many there are. Two passes over registers: exact centring.
    """
    xv = tl.where(pmask[:, None], x, 0.0)
    mean = tl.sum(xv, axis=0) / count.to(tl.float32)
    d = tl.where(pmask[:, None], x - mean[None, :], 0.0)
    m2 = tl.sum(d * d, axis=0)
    return mean, m2


@triton.jit
def _chan_merge(ws_ptr, first, count, HW, UNIT, BLOCK_T: tl.constexpr, C: tl.constexpr):
    """Chan-merge partials ``first .. first + count - 1`` at ``ws_ptr`` ([*, 2, C] fp32), in index order.

    Partial ``j`` covers pixels ``[j·UNIT, min((j+1)·UNIT, HW))`` of its image
    (tiles: UNIT = BLOCK_P; groups: UNIT = G·BLOCK_P), so its count is
    ``min(HW - j·UNIT, UNIT)``: int32, exact. Returns ``(mean, M2)`` of the union.
    """
    offs_c = tl.arange(0, C)
    offs_t = tl.arange(0, BLOCK_T)
    mean_acc = tl.zeros([C], dtype=tl.float32)
    m2_acc = tl.zeros([C], dtype=tl.float32)
    for t0 in range(first, first + count, BLOCK_T):
        j = t0 + offs_t
        jmask = j < first + count
        cnt_i = tl.where(jmask, tl.minimum(HW - j * UNIT, UNIT), 0)  # int32 pixel counts
        ptrs = ws_ptr + j.to(tl.int64)[:, None] * (2 * C) + offs_c[None, :]
        # .cg: read at L2 (the coherence point), never a stale L1 line.
        m_i = tl.load(ptrs, mask=jmask[:, None], other=0.0, cache_modifier=".cg")
        q_i = tl.load(ptrs + C, mask=jmask[:, None], other=0.0, cache_modifier=".cg")
        # Step statistics (Chan, k-way): exact, every term >= 0 in M2.
        w_i = cnt_i.to(tl.float32)[:, None]  # <= UNIT: exact in fp32
        cnt_c = tl.sum(cnt_i, axis=0)
        mean_c = tl.sum(w_i * m_i, axis=0) / cnt_c.to(tl.float32)
        dev = m_i - mean_c[None, :]
        m2_c = tl.sum(q_i, axis=0) + tl.sum(w_i * dev * dev, axis=0)
        # Fold into the running result; every partial before t0 is full.
        cnt_a = (t0 - first) * UNIT
        frac = cnt_c.to(tl.float32) / (cnt_a + cnt_c).to(tl.float32)  # n_c / n, the only rounded count term
        delta = mean_c - mean_acc
        mean_acc = mean_acc + delta * frac
        m2_acc = m2_acc + m2_c + delta * delta * (cnt_a.to(tl.float32) * frac)
    return mean_acc, m2_acc


@triton.jit
def _cca_mlp(
    mean, m2, w1_ptr, b1_ptr, w2_ptr, b2_ptr, s_ptr, n, HW, stride_sn, stride_sc, C: tl.constexpr, R: tl.constexpr
):
    """``s[n, :] = σ(W2ᵀ·relu(W1ᵀ·(mean + sqrt(M2 / HW)) + b1) + b2)`` from the merged statistics."""
    offs_c = tl.arange(0, C)
    std = tl.sqrt_rn(m2 / (HW * 1.0))  # M2 >= 0: a constant channel gives exactly 0
    y = mean + std
    # Squeeze MLP on the [C] vector: C·R + R·C multiply-adds, in registers.
    offs_r = tl.arange(0, R)
    w1 = tl.load(w1_ptr + offs_c[:, None] * R + offs_r[None, :]).to(tl.float32)
    hid = tl.sum(y[:, None] * w1, axis=0) + tl.load(b1_ptr + offs_r).to(tl.float32)
    hid = tl.maximum(hid, 0.0)
    w2 = tl.load(w2_ptr + offs_r[:, None] * C + offs_c[None, :]).to(tl.float32)
    z = tl.sum(hid[:, None] * w2, axis=0) + tl.load(b2_ptr + offs_c).to(tl.float32)
    tl.store(s_ptr + n.to(tl.int64) * stride_sn + offs_c * stride_sc, tl.sigmoid(z))


@triton.jit
def cca_merge_tile(
    ws_ptr,  # fp32 workspace: tile partials [N, T, 2, C], then group partials [N, NG, 2, C]
    cnt_ptr,  # int32 counters, zero before the launch: [N] per image, then [N, NG] per group
    w1_ptr,  # [C, R] fp32: W1 = (diag(d1)·pw1)ᵀ
    b1_ptr,  # [R] fp32
    w2_ptr,  # [R, C] fp32: W2 = (diag(d2)·pw2)ᵀ
    b2_ptr,  # [C] fp32
    s_ptr,  # [N, C] fp32 output
    mean,  # [C] fp32: this tile's mean (cca_tile_partials)
    m2,  # [C] fp32: this tile's M2
    n,  # image
    N,  # images
    tile,  # this program's tile of image n
    T,  # tiles per image
    G,  # tiles per group (launcher: bcrn_fast.ops.cca.merge_group)
    HW,  # pixels per image
    stride_sn,
    stride_sc,
    BLOCK_P: tl.constexpr,  # pixels per tile (tile t holds min(BLOCK_P, HW - t·BLOCK_P) pixels)
    BLOCK_T: tl.constexpr,  # partials merged in parallel per step
    C: tl.constexpr,  # channels (64)
    R: tl.constexpr,  # squeezed channels (4)
):
    """Publish tile ``tile``'s partials; the group's last program merges the group, the image's last writes ``s``.

    Each publication is ordered before its counter bump by a barrier (every
    thread's stores happen before the single-thread release atomic); the
    atomic's acquire side plus the broadcast of its result orders the merging
    program's workspace reads, which go to L2 (``.cg``).
    """
    offs_c = tl.arange(0, C)
    NG = tl.cdiv(T, G)
    g = tile // G
    tile_ws = ws_ptr + (n * T).to(tl.int64) * (2 * C)  # image n's tile partials
    group_ws = ws_ptr + (N * T + n * NG).to(tl.int64) * (2 * C)  # image n's group partials
    base = tile_ws + tile.to(tl.int64) * (2 * C)
    tl.store(base + offs_c, mean)
    tl.store(base + C + offs_c, m2)
    tl.debug_barrier()
    first = g * G
    in_group = tl.minimum(T - first, G)
    if tl.atomic_add(cnt_ptr + N + n * NG + g, 1, sem="acq_rel") == in_group - 1:
        # last of its group: merge the group's tiles in tile order, publish the group partial
        mean_g, m2_g = _chan_merge(tile_ws, first, in_group, HW, BLOCK_P, BLOCK_T, C)
        gbase = group_ws + g.to(tl.int64) * (2 * C)
        tl.store(gbase + offs_c, mean_g)
        tl.store(gbase + C + offs_c, m2_g)
        tl.debug_barrier()
        if tl.atomic_add(cnt_ptr + n, 1, sem="acq_rel") == NG - 1:
            # last group of the image: merge the group partials in group order
            mean_n, m2_n = _chan_merge(group_ws, 0, NG, HW, G * BLOCK_P, BLOCK_T, C)
            _cca_mlp(mean_n, m2_n, w1_ptr, b1_ptr, w2_ptr, b2_ptr, s_ptr, n, HW, stride_sn, stride_sc, C, R)


@triton.jit
def cca_scale_kernel(
    # pointers
    x_ptr,  # [N, C, H, W] storage dtype, any strides
    w1_ptr,  # [C, R] fp32
    b1_ptr,  # [R] fp32
    w2_ptr,  # [R, C] fp32
    b2_ptr,  # [C] fp32
    s_ptr,  # [N, C] fp32 output
    ws_ptr,  # fp32 workspace (cca_merge_tile)
    cnt_ptr,  # int32 counters, zeroed (cca_merge_tile)
    # sizes
    W,
    HW,
    T,  # tiles per image = cdiv(HW, BLOCK_P)
    G,  # tiles per merge group
    N,  # images
    # strides (elements)
    stride_xn,
    stride_xc,
    stride_xh,
    stride_xw,
    stride_sn,
    stride_sc,
    # meta
    C: tl.constexpr,  # 64: arange length, the whole channel row per pixel
    R: tl.constexpr,  # 4: MLP width, unrolled
    BLOCK_P: tl.constexpr,  # pixels per program: tile shape
    BLOCK_T: tl.constexpr,  # partials per merge step: tile shape
    WIDE_INDEX: tl.constexpr,  # int64 in-image offsets: some element offset of x reaches 2^31
):
    """``s[n, :] = σ(W2ᵀ·relu(W1ᵀ·(mean + std)(x[n]) + b1) + b2)``.

    Program (tile, n) owns pixels ``[tile·BLOCK_P, (tile+1)·BLOCK_P)`` of image n
    times all C channels; the merge tree's last program of image n finalises ``s[n, :]``.
    """
    tile = tl.program_id(0)
    n = tl.program_id(1)
    offs_p = tile * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = tl.arange(0, C)
    pmask = offs_p < HW
    if WIDE_INDEX:
        offs_p = offs_p.to(tl.int64)
        offs_c = offs_c.to(tl.int64)
    h = offs_p // W
    w = offs_p % W
    ptrs = (
        x_ptr
        + n.to(tl.int64) * stride_xn
        + h[:, None] * stride_xh
        + w[:, None] * stride_xw
        + offs_c[None, :] * stride_xc
    )
    x = tl.load(ptrs, mask=pmask[:, None], other=0.0).to(tl.float32)
    count = tl.minimum(HW - tile * BLOCK_P, BLOCK_P)
    mean, m2 = cca_tile_partials(x, pmask, count)
    cca_merge_tile(
        ws_ptr, cnt_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, s_ptr, mean, m2, n, N, tile, T, G, HW, stride_sn, stride_sc,
        BLOCK_P, BLOCK_T, C, R,
    )  # fmt: skip


@triton.jit
def channel_scale_kernel(
    # pointers
    x_ptr,  # [N, C, H, W] storage dtype, any strides
    s_ptr,  # [N, C] fp32 scales
    y_ptr,  # [N, C, H, W] storage dtype output, any strides
    # sizes
    W,
    HW,
    # strides (elements)
    stride_xn,
    stride_xc,
    stride_xh,
    stride_xw,
    stride_sn,
    stride_sc,
    stride_yn,
    stride_yc,
    stride_yh,
    stride_yw,
    # meta
    C: tl.constexpr,  # 64: whole channel row per pixel
    BLOCK_P: tl.constexpr,  # pixels per program: tile shape
    WIDE_INDEX: tl.constexpr,  # int64 in-image offsets: some element offset of x or y reaches 2^31
):
    """``y[n, c, p] = x[n, c, p] · s[n, c]``; program (tile, n) owns BLOCK_P pixels × C channels."""
    tile = tl.program_id(0)
    n = tl.program_id(1).to(tl.int64)
    offs_p = tile * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = tl.arange(0, C)
    pmask = offs_p < HW
    if WIDE_INDEX:
        offs_p = offs_p.to(tl.int64)
        offs_c = offs_c.to(tl.int64)
    h = offs_p // W
    w = offs_p % W
    x = tl.load(
        x_ptr + n * stride_xn + h[:, None] * stride_xh + w[:, None] * stride_xw + offs_c[None, :] * stride_xc,
        mask=pmask[:, None],
        other=0.0,
    )
    s = tl.load(s_ptr + n * stride_sn + offs_c * stride_sc)
    y = x.to(tl.float32) * s[None, :]
    tl.store(
        y_ptr + n * stride_yn + h[:, None] * stride_yh + w[:, None] * stride_yw + offs_c[None, :] * stride_yc,
        y.to(y_ptr.dtype.element_ty),
        mask=pmask[:, None],
    )


# --------------------------------------------------------------------------- launch configurations
# cca_scale_kernel and channel_scale_kernel (and esa_apply_kernel's tensor-core modes): a [BLOCK_P, C] tile.
# Ahead-of-time compiled for sm_90 with the JIT's divisibility hints, a [128, 64] tile needs 105-122
# registers/thread at 4 warps but 63-64 at 8 (105 for fp16 esa_apply), doubling occupancy of these
# memory-bound kernels. Fact ``big``: the tile has 4K elements or more.
# fmt: off
CONFIGS = (
    Rule({"big": True}, Config(128, 8, why="[128, 64] at 4 warps: 105-122 registers, at 8: 63-64 (sm_90)")),
    Rule({}, Config(128, 4, why="tiles under 4K elements: 4 warps")),
)
# fmt: on


def launch_config(hw: int, channels: int) -> tuple[int, int]:
    """(BLOCK_P, num_warps) of ``CONFIGS`` for a ``[BLOCK_P, channels]`` tile over ``hw`` pixels."""
    tile = natural_tile(hw, channels)
    config = pick(CONFIGS, big=tile * channels >= 4096)
    return pixel_tile(config, hw, channels), config.num_warps
