"""CCA (contrast-aware channel attention) kernels: statistics, squeeze MLP, scale.

``s[n, :] = sigmoid(W2ᵀ·relu(W1ᵀ·(mean + std) + b1) + b2)`` with the spatial
mean and population std (no epsilon) of each (n, c), in one launch:

1. every program reduces its ``[BLOCK_P, C]`` tile of one image to per-channel
   partials ``(mean_t, M2_t)`` (two passes over the registers, so no
   Σx / Σx² cancellation) and stores them in a workspace ``[N, T, 2, C]``;
   the tile's pixel count follows from its index, so it is not stored;
2. it then bumps the image's counter (``atomic_add``, acq_rel). The program
   that sees ``T - 1`` is the last one of its image: all partials are
   published, and it merges them in a FIXED order (tile 0, 1, ..., T - 1,
   whatever program happens to finish last), so ``s`` is bit-for-bit
   reproducible. The merge is Chan's exact pairwise combination: a chunk of
   BLOCK_T partials at a time in parallel
   (``mean = Σ n_i m_i / Σ n_i``, ``M2 = Σ M2_i + Σ n_i (m_i - mean)²``), the
   chunks folded sequentially into the running result;
3. the last program computes ``mean + sqrt(M2 / HW)``, the 64 -> 4 -> 64 MLP
   and the sigmoid and writes ``s[n, :]`` (fp32).

The helpers ``cca_tile_partials``, ``cca_publish_partials`` and
``cca_finalize`` are shared with the ESA apply kernel (``esa.py``), which
accumulates the CCA statistics of the map it writes.

Bytes: one read of the map (``N·HW·C`` elements) + ``8·C`` bytes of partials
per tile; the merge and the MLP are negligible.
"""

import triton
import triton.language as tl


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
def cca_publish_partials(ws_ptr, cnt_ptr, n, tile, T, mean, m2, C: tl.constexpr):
    """Store tile ``tile``'s partials of image ``n``; True in the image's last program.

    ``ws_ptr``: [N, T, 2, C] fp32 contiguous workspace; ``cnt_ptr``: [N] int32
    counters, zero before the launch. The barrier makes every thread's stores
    happen before the (single-thread, release) atomic; its acquire side plus
    the broadcast of its result orders the last program's workspace reads.
    """
    offs_c = tl.arange(0, C)
    base = ws_ptr + (n * T + tile).to(tl.int64) * (2 * C)
    tl.store(base + offs_c, mean)
    tl.store(base + C + offs_c, m2)
    tl.debug_barrier()
    prev = tl.atomic_add(cnt_ptr + n, 1, sem="acq_rel")
    return prev == T - 1


@triton.jit
def cca_finalize(
    ws_ptr,  # [N, T, 2, C] fp32: every tile's (mean_t, M2_t) of image n
    w1_ptr,  # [C, R] fp32: W1 = (diag(d1)·pw1)ᵀ
    b1_ptr,  # [R] fp32
    w2_ptr,  # [R, C] fp32: W2 = (diag(d2)·pw2)ᵀ
    b2_ptr,  # [C] fp32
    s_ptr,  # [N, C] fp32 output
    n,
    T,  # tiles per image
    HW,  # pixels per image
    stride_sn,
    stride_sc,
    BLOCK_P: tl.constexpr,  # pixels per tile (tile t holds min(BLOCK_P, HW - t·BLOCK_P) pixels)
    BLOCK_T: tl.constexpr,  # partials merged in parallel per step
    C: tl.constexpr,  # channels (64)
    R: tl.constexpr,  # squeezed channels (4)
):
    """Merge image ``n``'s partials in tile order, then ``s = σ(W2ᵀ·relu(W1ᵀ·(mean+std)+b1)+b2)``."""
    offs_c = tl.arange(0, C)
    offs_t = tl.arange(0, BLOCK_T)
    mean_acc = tl.zeros([C], dtype=tl.float32)
    m2_acc = tl.zeros([C], dtype=tl.float32)
    for t0 in range(0, T, BLOCK_T):
        tid = t0 + offs_t
        tmask = tid < T
        # Pixel counts from the tile index: all tiles are full except the last.
        cnt_i = tl.where(tmask, tl.minimum(HW - tid * BLOCK_P, BLOCK_P), 0).to(tl.float32)
        ptrs = ws_ptr + (n * T + tid).to(tl.int64)[:, None] * (2 * C) + offs_c[None, :]
        # .cg: read at L2 (the coherence point), never a stale L1 line.
        m_i = tl.load(ptrs, mask=tmask[:, None], other=0.0, cache_modifier=".cg")
        q_i = tl.load(ptrs + C, mask=tmask[:, None], other=0.0, cache_modifier=".cg")
        # Chunk statistics (Chan, k-way): exact, every term >= 0 in M2.
        cnt_c = tl.sum(cnt_i, axis=0)
        mean_c = tl.sum(cnt_i[:, None] * m_i, axis=0) / cnt_c
        dev = m_i - mean_c[None, :]
        m2_c = tl.sum(q_i, axis=0) + tl.sum(cnt_i[:, None] * dev * dev, axis=0)
        # Fold into the running result; every tile before t0 is full.
        cnt_a = (t0 * BLOCK_P) * 1.0  # exact in fp32 up to 2^24 pixels
        cnt_new = cnt_a + cnt_c
        delta = mean_c - mean_acc
        mean_acc = mean_acc + delta * (cnt_c / cnt_new)
        m2_acc = m2_acc + m2_c + delta * delta * (cnt_a * cnt_c / cnt_new)
    std = tl.sqrt_rn(m2_acc / (HW * 1.0))  # M2 >= 0: a constant channel gives exactly 0
    y = mean_acc + std
    # Squeeze MLP on the [C] vector: C·R + R·C multiply-adds, in registers.
    offs_r = tl.arange(0, R)
    w1 = tl.load(w1_ptr + offs_c[:, None] * R + offs_r[None, :]).to(tl.float32)
    hid = tl.sum(y[:, None] * w1, axis=0) + tl.load(b1_ptr + offs_r).to(tl.float32)
    hid = tl.maximum(hid, 0.0)
    w2 = tl.load(w2_ptr + offs_r[:, None] * C + offs_c[None, :]).to(tl.float32)
    z = tl.sum(hid[:, None] * w2, axis=0) + tl.load(b2_ptr + offs_c).to(tl.float32)
    s = tl.sigmoid(z)
    tl.store(s_ptr + n.to(tl.int64) * stride_sn + offs_c * stride_sc, s)


@triton.jit
def cca_scale_kernel(
    # pointers
    x_ptr,  # [N, C, H, W] storage dtype, any strides
    w1_ptr,  # [C, R] fp32
    b1_ptr,  # [R] fp32
    w2_ptr,  # [R, C] fp32
    b2_ptr,  # [C] fp32
    s_ptr,  # [N, C] fp32 output
    ws_ptr,  # [N, T, 2, C] fp32 workspace (partials)
    cnt_ptr,  # [N] int32 counters, zeroed
    # sizes
    W,
    HW,
    T,  # tiles per image = cdiv(HW, BLOCK_P)
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
):
    """``s[n, :] = σ(W2ᵀ·relu(W1ᵀ·(mean + std)(x[n]) + b1) + b2)``.

    Program (tile, n) owns pixels ``[tile·BLOCK_P, (tile+1)·BLOCK_P)`` of image n
    times all C channels; the last program of image n finalises ``s[n, :]``.
    """
    tile = tl.program_id(0)
    n = tl.program_id(1)
    offs_p = tile * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = tl.arange(0, C)
    pmask = offs_p < HW
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
    if cca_publish_partials(ws_ptr, cnt_ptr, n, tile, T, mean, m2, C):
        cca_finalize(
            ws_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, s_ptr, n, T, HW, stride_sn, stride_sc, BLOCK_P, BLOCK_T, C, R
        )


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
):
    """``y[n, c, p] = x[n, c, p] · s[n, c]``; program (tile, n) owns BLOCK_P pixels × C channels."""
    tile = tl.program_id(0)
    n = tl.program_id(1).to(tl.int64)
    offs_p = tile * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = tl.arange(0, C)
    pmask = offs_p < HW
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
