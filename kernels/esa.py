"""ESA (enhanced spatial attention) kernels: the strided pool, the low-resolution branch and the apply.

``esa_pool_kernel``: conv2's depthwise 3×3 stride 2 (valid) fused with the
7×7 / 3 max-pool; the stride-2 map ``c1`` is never written.

``esa_low_kernel``: the three BSConvU 3×3 of the pooled map
(``conv3_(relu(conv3(relu(conv_max(v)))))``) in one launch, halo-grown tiles
and a per-program scratch instead of two intermediate maps.

``esa_apply_kernel``: ``u = t ⊙ σ(W4ᵀ·(bilinear↑(c3) + Wfᵀ·t + bf) + b4)``,
written into a channel slice of a wider buffer, optionally with the CCA
statistics of ``u`` (helpers from ``cca.py``) and the last-program
finalisation of the CCA scale.
"""

import torch
import triton
import triton.language as tl

from . import Config, Rule, natural_tile, pick, pixel_tile
from .cca import cca_merge_tile, cca_tile_partials


@triton.jit
def esa_pool_kernel(
    # pointers
    a_ptr,  # [N, F, H, W] storage dtype, any strides: pw2·conv1(t)
    dw_ptr,  # [9, F] fp32: conv2 depthwise taps, tap = 3·ky + kx
    b_ptr,  # [F] fp32: conv2 bias
    v_ptr,  # [N, F, Hp, Wp] storage dtype output, any strides
    # sizes
    Wp,
    HWp,  # Hp·Wp pooled pixels per image
    # strides (elements)
    stride_an,
    stride_af,
    stride_ah,
    stride_aw,
    stride_vn,
    stride_vf,
    stride_vh,
    stride_vw,
    # meta
    F: tl.constexpr,  # 16: whole channel row per pixel
    BLOCK_Q: tl.constexpr,  # pooled pixels per program: tile shape
    WIDE_INDEX: tl.constexpr,  # int64 in-image offsets (a tensor's largest element offset >= 2^31), else i32
):
    """``v[n, :, i, j] = max_{dy,dx<7} (b + Σ_{ky,kx<3} dw[3ky+kx] ⊙ a[n, :, 6i+2dy+ky, 6j+2dx+kx])``.

    Program (tile, n) owns pooled pixels ``[tile·BLOCK_Q, (tile+1)·BLOCK_Q)`` of
    image n times all F channels. Its tile is ``[BLOCK_Q, 64, F]``: the 7×7
    pooling window padded to 8×8 slots (slot = 8·dy + dx, the 15 padding slots
    masked to -inf), so the stride-2 conv outputs ``c1`` of every window are
    recomputed on the fly with 9 shifted loads + FMAs (reads hit cache; c1 is
    never written), then max-reduced over the window axis. Every read of a
    valid slot is in bounds: 6(Hp-1)+14 <= 2·H2 - 2 <= H - 1.
    """
    tile = tl.program_id(0)
    n = tl.program_id(1).to(tl.int64)
    offs_q = tile * BLOCK_Q + tl.arange(0, BLOCK_Q)
    slot = tl.arange(0, 64)
    offs_f = tl.arange(0, F)
    qmask = offs_q < HWp
    dy = slot // 8
    dx = slot % 8
    svalid = (dy < 7) & (dx < 7)
    i = offs_q // Wp
    j = offs_q % Wp
    if WIDE_INDEX:  # int64 row/column/channel indices make every offset product and sum below int64
        i = i.to(tl.int64)
        j = j.to(tl.int64)
        offs_f = offs_f.to(tl.int64)
    # Top-left input tap of c1[3i + dy, 3j + dx]: a[6i + 2dy, 6j + 2dx].
    r0 = (6 * i)[:, None] + (2 * dy)[None, :]  # [BLOCK_Q, 64]
    c0 = (6 * j)[:, None] + (2 * dx)[None, :]
    lmask = (qmask[:, None] & svalid[None, :])[:, :, None]
    a_base = a_ptr + n * stride_an + offs_f[None, None, :] * stride_af
    acc = tl.zeros([BLOCK_Q, 64, F], dtype=tl.float32) + tl.load(b_ptr + offs_f)[None, None, :]
    for ky in tl.static_range(3):
        for kx in tl.static_range(3):
            tap = tl.load(dw_ptr + (3 * ky + kx) * F + offs_f)
            ptrs = a_base + (r0 + ky)[:, :, None] * stride_ah + (c0 + kx)[:, :, None] * stride_aw
            av = tl.load(ptrs, mask=lmask, other=0.0).to(tl.float32)
            acc += av * tap[None, None, :]
    acc = tl.where(svalid[None, :, None], acc, float("-inf"))
    vmax = tl.max(acc, axis=1)  # [BLOCK_Q, F]
    # NaN propagates like torch's max_pool2d (the GPU's max drops NaN operands).
    has_nan = tl.max((acc != acc).to(tl.int32), axis=1)
    vmax = tl.where(has_nan > 0, float("nan"), vmax)
    ptrs = v_ptr + n * stride_vn + i[:, None] * stride_vh + j[:, None] * stride_vw + offs_f[None, :] * stride_vf
    tl.store(ptrs, vmax.to(v_ptr.dtype.element_ty), mask=qmask[:, None])


@triton.jit
def _low_pointwise(x, pw_ptr, offs_f, F: tl.constexpr, DOT_IN_FP32: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    """``x [S², F] · pw [F, F]`` (pw_ptr: one stage's transposed pointwise weight, compute dtype) -> fp32."""
    pw = tl.load(pw_ptr + offs_f[:, None] * F + offs_f[None, :])
    if DOT_IN_FP32:  # exact upcast of the rounded operands (interpreter bf16 workaround)
        return tl.dot(x.to(tl.float32), pw.to(tl.float32), input_precision="ieee")
    return tl.dot(x.to(pw_ptr.dtype.element_ty), pw, input_precision=INPUT_PRECISION)


@triton.jit
def _low_depthwise(y_ptr, dw_ptr, b_ptr, idx, li, lj, offs_f, S: tl.constexpr, F: tl.constexpr):
    """``b + Σ_tap dw[tap] ⊙ y[p + tap - (1, 1)]`` over the block, y read from scratch ([S², F] fp32 at y_ptr).

    Taps falling off the block read 0: those pixels lie in the outer ring the next stage never uses.
    """
    acc = tl.zeros([S * S, F], dtype=tl.float32) + tl.load(b_ptr + offs_f)[None, :]
    for ky in tl.static_range(3):
        for kx in tl.static_range(3):
            ok = (li + (ky - 1) >= 0) & (li + (ky - 1) < S) & (lj + (kx - 1) >= 0) & (lj + (kx - 1) < S)
            src = idx + ((ky - 1) * S + (kx - 1))
            y = tl.load(y_ptr + src[:, None] * F + offs_f[None, :], mask=ok[:, None], other=0.0)
            acc += y * tl.load(dw_ptr + (3 * ky + kx) * F + offs_f)[None, :]
    return acc


@triton.jit
def _low_relu_zero_padded(z, inside, dtype: tl.constexpr):
    """The next conv's input: relu (NaN kept, like torch.relu) inside the image, 0 outside (its zero padding),
    rounded to the storage dtype as a stored intermediate map would be."""
    z = tl.where(z != z, z, tl.maximum(z, 0.0))
    return tl.where(inside[:, None], z, 0.0).to(dtype)


@triton.jit
def esa_low_kernel(
    # pointers
    v_ptr,  # [N, F, Hl, Wl] storage dtype, any strides: the pooled map
    pw_ptr,  # [3, F, F] compute dtype: stage k's pointwise weight transposed, [k, in, out]
    dw_ptr,  # [3, 9, F] fp32: stage k's depthwise taps, tap = 3·ky + kx
    b_ptr,  # [3, F] fp32: stage k's depthwise bias
    c3_ptr,  # [N, F, Hl, Wl] storage dtype output, any strides
    ws_ptr,  # [N·T, 2, S², F] fp32 scratch: two blocks per program, each fully written before it is read
    # sizes
    Hl,
    Wl,
    TILES_W,  # tiles per row of the output = cdiv(Wl, S - 6)
    T,  # tiles per image
    # strides (elements)
    stride_vn,
    stride_vf,
    stride_vh,
    stride_vw,
    stride_cn,
    stride_cf,
    stride_ch,
    stride_cw,
    # meta
    F: tl.constexpr,  # 16: the ESA width, whole channel row per pixel, dot K and N
    S: tl.constexpr,  # block side (power of two): the program owns (S-6)² outputs, dot M = S²
    DOT_IN_FP32: tl.constexpr,  # upcast dot operands (interpreter workaround, bf16 only)
    INPUT_PRECISION: tl.constexpr,  # "ieee" | "tf32" for fp32 dots
    WIDE_INDEX: tl.constexpr,  # int64 offsets into v / c3 (tests force it; the pooled map never needs it)
):
    """``c3 = conv3_(relu(conv3(relu(conv_max(v)))))``, each a BSConvU 3×3 pad 1: ``b + dw ⊛ (pw · x)``.

    Program (tile, n) owns the ``(S-6)×(S-6)`` output pixels at ``(ty, tx)·(S-6)`` of image n, all F
    channels, and works on the ``S×S`` block grown by a 3-pixel halo (block pixel (i, j) is map pixel
    ``(ty·(S-6) - 3 + i, tx·(S-6) - 3 + j)``), flattened to ``[S², F]`` tiles:

    1. ``y1 = pw1 · v`` on the block (v is 0 off the map, so y1 is too): one dot -> scratch A;
    2. ``x2 = relu(b1 + dw1 ⊛ y1)`` (exact on block pixels 1..S-2), 0 off the map (conv3's zero padding);
       ``y2 = pw2 · x2`` -> scratch B;
    3. ``x3 = relu(b2 + dw2 ⊛ y2)`` (exact on 2..S-3), 0 off the map; ``y3 = pw3 · x3`` -> scratch A;
    4. ``c3 = b3 + dw3 ⊛ y3``, exact on 3..S-4: the owned pixels, stored.

    Pointwise once, then depthwise (not the pointwise per tap): 3 dots of ``[S², F]·[F, F]`` per program
    (S = 16: 196,608 MACs, 1,966 per owned pixel, where the per-tap scheme takes 9× that: 17,695) plus
    3·9·F FMAs per block pixel (110,592). The depthwise taps need neighbouring pixels, which in registers
    belong to other threads: each stage's pointwise result goes through this program's scratch (fp32, in
    L1/L2: ``2·S²·F·4`` = 32 KB at S = 16), ordered by ``tl.debug_barrier()`` (bar.sync: the block's
    global stores are visible to all its threads afterwards). Intermediates are rounded to the storage
    dtype before each dot, exactly as three separate BSConv launches would store them.
    Bytes per program: the ``S²·F`` block of v (2.56× the owned part at S = 16; the map is ~HW/36 pixels,
    so it is small either way), ``(S-6)²·F`` of c3; scratch 3 writes and 27 tap reads of ``S²·F`` fp32.
    """
    tile = tl.program_id(0)
    n = tl.program_id(1)
    n64 = n.to(tl.int64)
    OWN: tl.constexpr = S - 6
    idx = tl.arange(0, S * S)
    li = idx // S
    lj = idx % S
    gy = (tile // TILES_W) * OWN - 3 + li
    gx = (tile % TILES_W) * OWN - 3 + lj
    inside = (gy >= 0) & (gy < Hl) & (gx >= 0) & (gx < Wl)
    offs_f = tl.arange(0, F)
    if WIDE_INDEX:  # int64 row/column/channel indices make every offset product and sum below int64
        gy = gy.to(tl.int64)
        gx = gx.to(tl.int64)
        f_a = offs_f.to(tl.int64)
    else:
        f_a = offs_f
    dtype = c3_ptr.dtype.element_ty
    scratch_a = ws_ptr + (n64 * T + tile) * (2 * S * S * F)
    scratch_b = scratch_a + S * S * F
    blk = idx[:, None] * F + offs_f[None, :]

    v_ptrs = v_ptr + n64 * stride_vn + gy[:, None] * stride_vh + gx[:, None] * stride_vw + f_a[None, :] * stride_vf
    x = tl.load(v_ptrs, mask=inside[:, None], other=0.0)
    tl.store(scratch_a + blk, _low_pointwise(x, pw_ptr, offs_f, F, DOT_IN_FP32, INPUT_PRECISION))
    tl.debug_barrier()
    z = _low_depthwise(scratch_a, dw_ptr, b_ptr, idx, li, lj, offs_f, S, F)
    x = _low_relu_zero_padded(z, inside, dtype)
    tl.store(scratch_b + blk, _low_pointwise(x, pw_ptr + F * F, offs_f, F, DOT_IN_FP32, INPUT_PRECISION))
    tl.debug_barrier()
    z = _low_depthwise(scratch_b, dw_ptr + 9 * F, b_ptr + F, idx, li, lj, offs_f, S, F)
    x = _low_relu_zero_padded(z, inside, dtype)
    # scratch A's last reads (step 2's taps) precede the barrier above in every thread: safe to overwrite
    tl.store(scratch_a + blk, _low_pointwise(x, pw_ptr + 2 * F * F, offs_f, F, DOT_IN_FP32, INPUT_PRECISION))
    tl.debug_barrier()
    z = _low_depthwise(scratch_a, dw_ptr + 18 * F, b_ptr + 2 * F, idx, li, lj, offs_f, S, F)
    own = inside & (li >= 3) & (li < S - 3) & (lj >= 3) & (lj < S - 3)
    c_ptrs = c3_ptr + n64 * stride_cn + gy[:, None] * stride_ch + gx[:, None] * stride_cw + f_a[None, :] * stride_cf
    tl.store(c_ptrs, z.to(dtype), mask=own[:, None])


# Hl/Wl are not specialised on the value 1 (ESA's 1-pixel low-res map of a 15x15
# input): that variant made ptxas spill 8 B on sm_80, the generic code does not.
@triton.jit(do_not_specialize=["Hl", "Wl"])
def esa_apply_kernel(
    # pointers
    t_ptr,  # [N, C, H, W] storage dtype, any strides: the ESA input
    c3_ptr,  # [N, F, Hl, Wl] storage dtype, any strides: low-res branch output
    wf_ptr,  # [C, F] compute dtype: Wf = (diag(df)·pwf·diag(d1)·pw1)ᵀ
    bf_ptr,  # [F] fp32: diag(df)·pwf·b1 + bf
    w4_ptr,  # [F, C] compute dtype: W4 = (diag(d4)·pw4)ᵀ
    b4_ptr,  # [C] fp32
    u_ptr,  # [N, C, H, W] storage dtype output (a channel slice of a wider buffer), any strides
    w1_ptr,  # [C, R] fp32 CCA squeeze (HAS_CCA)
    b1_ptr,  # [R] fp32
    w2_ptr,  # [R, C] fp32
    b2_ptr,  # [C] fp32
    s_ptr,  # [N, C] fp32 CCA scale output (HAS_CCA)
    ws_ptr,  # [N, T, 2, C] fp32 CCA partials workspace (HAS_CCA)
    cnt_ptr,  # [N] int32 zeroed counters (HAS_CCA)
    # sizes
    W,
    HW,
    T,  # tiles per image = cdiv(HW, BLOCK_P)
    G,  # tiles per CCA merge group (bcrn_fast.ops.cca.merge_group)
    N,  # images
    Hl,
    Wl,
    scale_h,  # fp32 Hl / H (torch's align_corners=False ratio)
    scale_w,  # fp32 Wl / W
    # strides (elements)
    stride_tn,
    stride_tc,
    stride_th,
    stride_tw,
    stride_cn,
    stride_cf,
    stride_ch,
    stride_cw,
    stride_un,
    stride_uc,
    stride_uh,
    stride_uw,
    stride_sn,
    stride_sc,
    # meta
    C: tl.constexpr,  # 64: whole channel row per pixel, a dot dimension
    F: tl.constexpr,  # 16: ESA width, a dot dimension
    R: tl.constexpr,  # 4: CCA MLP width
    BLOCK_P: tl.constexpr,  # pixels per program: tile shape, dot M
    BLOCK_T: tl.constexpr,  # CCA partials per merge step
    HAS_CCA: tl.constexpr,  # compile the CCA statistics in or out
    DOT_IN_FP32: tl.constexpr,  # upcast dot operands (interpreter workaround, bf16 only)
    INPUT_PRECISION: tl.constexpr,  # "ieee" | "tf32" for fp32 dots
    WIDE_INDEX: tl.constexpr,  # int64 in-image offsets (e.g. u's slice of a 384-channel 4K buffer), else i32
):
    """``u = t ⊙ σ(W4ᵀ·(bilinear↑(c3) + Wfᵀ·t + bf) + b4)`` (+ CCA partials of u).

    Program (tile, n) owns pixels ``[tile·BLOCK_P, (tile+1)·BLOCK_P)`` of image n
    times all C channels: two small GEMMs ([BLOCK_P, C]·[C, F] and
    [BLOCK_P, F]·[F, C]) and a 4-tap gather of the F-channel low-res map.
    Bytes: read t once, write u once; c3 and the weights are cache-resident.
    """
    tile = tl.program_id(0)
    n = tl.program_id(1)
    n64 = n.to(tl.int64)
    offs_p = tile * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = tl.arange(0, C)
    offs_f = tl.arange(0, F)
    pmask = offs_p < HW
    h = offs_p // W
    w = offs_p % W
    # Address copies of the indices: int64 under WIDE_INDEX, so every offset product and sum is int64.
    # (offs_c/offs_f also index the small weight matrices; those offsets stay far below 2^31 either way.)
    if WIDE_INDEX:
        h_a = h.to(tl.int64)
        w_a = w.to(tl.int64)
        c_a = offs_c.to(tl.int64)
        f_a = offs_f.to(tl.int64)
    else:
        h_a = h
        w_a = w
        c_a = offs_c
        f_a = offs_f

    t_ptrs = t_ptr + n64 * stride_tn + h_a[:, None] * stride_th + w_a[:, None] * stride_tw + c_a[None, :] * stride_tc
    t = tl.load(t_ptrs, mask=pmask[:, None], other=0.0)
    wf = tl.load(wf_ptr + offs_c[:, None] * F + offs_f[None, :])
    w4 = tl.load(w4_ptr + offs_f[:, None] * C + offs_c[None, :])
    if DOT_IN_FP32:
        g = tl.dot(t.to(tl.float32), wf.to(tl.float32), input_precision=INPUT_PRECISION)
    else:
        g = tl.dot(t, wf, input_precision=INPUT_PRECISION)

    # Bilinear source (align_corners=False): src = max((dst + 0.5)·scale - 0.5, 0),
    # i0 = floor(src) (<= in - 1), i1 = min(i0 + 1, in - 1), weight of i1 = src - i0.
    src_h = tl.maximum((h.to(tl.float32) + 0.5) * scale_h - 0.5, 0.0)
    src_w = tl.maximum((w.to(tl.float32) + 0.5) * scale_w - 0.5, 0.0)
    h0 = tl.minimum(src_h.to(tl.int32), Hl - 1)
    w0 = tl.minimum(src_w.to(tl.int32), Wl - 1)
    lh = src_h - h0.to(tl.float32)
    lw = src_w - w0.to(tl.float32)
    h1 = tl.minimum(h0 + 1, Hl - 1)
    w1 = tl.minimum(w0 + 1, Wl - 1)
    if WIDE_INDEX:
        h0 = h0.to(tl.int64)
        w0 = w0.to(tl.int64)
        h1 = h1.to(tl.int64)
        w1 = w1.to(tl.int64)
    c_base = c3_ptr + n64 * stride_cn + f_a[None, :] * stride_cf
    m2d = pmask[:, None]
    v00 = tl.load(c_base + h0[:, None] * stride_ch + w0[:, None] * stride_cw, mask=m2d, other=0.0).to(tl.float32)
    v01 = tl.load(c_base + h0[:, None] * stride_ch + w1[:, None] * stride_cw, mask=m2d, other=0.0).to(tl.float32)
    v10 = tl.load(c_base + h1[:, None] * stride_ch + w0[:, None] * stride_cw, mask=m2d, other=0.0).to(tl.float32)
    v11 = tl.load(c_base + h1[:, None] * stride_ch + w1[:, None] * stride_cw, mask=m2d, other=0.0).to(tl.float32)
    lh2 = lh[:, None]
    lw2 = lw[:, None]
    up = (1.0 - lh2) * ((1.0 - lw2) * v00 + lw2 * v01) + lh2 * ((1.0 - lw2) * v10 + lw2 * v11)

    z = g + up + tl.load(bf_ptr + offs_f)[None, :]
    if DOT_IN_FP32:
        zc = z.to(w4_ptr.dtype.element_ty).to(tl.float32)  # keep the GPU path's rounding
        pre = tl.dot(zc, w4.to(tl.float32), input_precision=INPUT_PRECISION)
    else:
        pre = tl.dot(z.to(w4_ptr.dtype.element_ty), w4, input_precision=INPUT_PRECISION)
    gate = tl.sigmoid(pre + tl.load(b4_ptr + offs_c)[None, :])
    u = (t.to(tl.float32) * gate).to(u_ptr.dtype.element_ty)
    u_ptrs = u_ptr + n64 * stride_un + h_a[:, None] * stride_uh + w_a[:, None] * stride_uw + c_a[None, :] * stride_uc
    tl.store(u_ptrs, u, mask=m2d)

    if HAS_CCA:
        # Statistics of u as stored (what every consumer of u reads).
        count = tl.minimum(HW - tile * BLOCK_P, BLOCK_P)
        mean, m2 = cca_tile_partials(u.to(tl.float32), pmask, count)
        cca_merge_tile(
            ws_ptr,
            cnt_ptr,
            w1_ptr,
            b1_ptr,
            w2_ptr,
            b2_ptr,
            s_ptr,
            mean,
            m2,
            n,
            N,
            tile,
            T,
            G,
            HW,
            stride_sn,
            stride_sc,
            BLOCK_P,
            BLOCK_T,
            C,
            R,
        )


# --------------------------------------------------------------------------- launch configurations
# Fact ``kernel``: which kernel looks the table up.
# esa_apply_kernel: ``mode`` "ieee" (fp32 IEEE dots: FMA loops, no tensor cores), "tf32" or "half" (fp16/bf16);
# 3 stages is Triton's default (the launcher passed none before the rows said so).
# Fact ``big``: the (capped) tile has 4K elements or more. esa_pool_kernel runs the fixed POOL_BLOCK.
# esa_low_kernel, every dtype and precision: ``block_p`` is the S² pixels of its square halo block (S - 6
# owned per side). Fact ``tiny``: the pooled map fits one 8x8 block's 2x2 owned pixels (inputs below 27 px).
FMA_BLOCK_P = 64  # esa_apply at [128, 64] spills 1.6 KB of stack even at 8 warps; [64, 64] fits in 172 registers
# fmt: off
CONFIGS = (
    Rule({"kernel": "apply", "mode": "ieee", "big": True}, Config(FMA_BLOCK_P, 8, 3, why="[64, 64] FMA dots: 172 registers on 8 warps, no spills")),  # noqa: E501
    Rule({"kernel": "apply", "mode": "ieee"}, Config(FMA_BLOCK_P, 4, 3, why="tiles under 4K elements: 4 warps")),
    Rule({"kernel": "apply", "mode": "half"}, Config(64, 2, 3, why="docs/occupancy.md: [64, 64] on 2 warps, 128-167 registers, 6-7 programs (12-14 warps) per SM, no spills, 21-27 % fewer instructions than [128, 64] on 8 warps")),  # noqa: E501
    Rule({"kernel": "apply", "big": True}, Config(128, 8, 3, why="tf32 [128, 64] at 8 warps: 128-130 registers; 4 or 2 warps spill 40-80 B on sm_80/sm_90")),  # noqa: E501
    Rule({"kernel": "apply"}, Config(128, 4, 3, why="tf32 tiles under 4K elements: 4 warps")),
    Rule({"kernel": "low", "tiny": True}, Config(64, 2, why="8x8 block, [64, 16] tiles: 2 warps, no spills")),
    Rule({"kernel": "low", "fp32": True}, Config(256, 8, why="fp32 16x16 block: 4 warps spill 8-72 B at 255 registers on sm_86/sm_89 (Triton 3.6)")),  # noqa: E501
    Rule({"kernel": "low"}, Config(256, 4, why="16x16 block, [256, 16] half tiles: 4 warps, no spills")),
)
# fmt: on


def launch_config(hw: int, channels: int, mode: str = "ieee") -> tuple[int, int, int]:
    """(BLOCK_P, num_warps, num_stages) of ``CONFIGS`` for esa_apply's ``[BLOCK_P, channels]`` tile over ``hw``
    pixels in ``mode`` ("ieee" / "tf32" fp32 dots, "half" for fp16/bf16)."""
    tile = natural_tile(hw, channels)
    tile = min(tile, FMA_BLOCK_P) if mode == "ieee" else tile
    config = pick(CONFIGS, kernel="apply", mode=mode, big=tile * channels >= 4096, tiny=False, fp32=mode != "half")
    return pixel_tile(config, hw, channels), config.num_warps, config.num_stages


def low_launch_config(hl: int, wl: int, dtype: torch.dtype = torch.float16) -> tuple[int, int]:
    """(S, num_warps) of ``CONFIGS`` for esa_low_kernel on an ``hl x wl`` pooled ``dtype`` map: S is the block side."""
    config = pick(CONFIGS, kernel="low", mode="", big=False, tiny=max(hl, wl) <= 2, fp32=dtype == torch.float32)
    side = 8
    while side * side < config.block_p:
        side *= 2
    return side, config.num_warps
