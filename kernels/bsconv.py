"""BSConvU (pointwise 1x1 then depthwise KxK) as Triton kernels, sized to the network's arithmetic.

Used for every BSConvU of BCRN: the 3x3 convs (pad 1), the 1x1 form, ESA's
stride-2 valid 3x3, the tail ``conv2`` over the 384-channel buffer (CCA scale
on load, GELU, + F0) and the upsampler (pixel shuffle as store addressing).
Launcher, checks and dispatch: ``bcrn_fast.ops.bsconv``.

    y[n, o, q] = act(b[o] + Σ_tap dw[tap, o] · Σ_i pw[i, o] · s[n, i] · x[n, i, q·S − P + tap]) + res[n, o, q]

Three dataflows (:func:`dataflow` picks one per launch; MACs per output pixel,
``Kp``/``Op``: the K chunk and Cout padded to powers of two):

- ``"implicit"``: an implicit-GEMM KxK conv with the dense per-tap weight
  ``W_tap[i, o] = s[n, i] · pw[i, o] · dw[tap, o]`` built once per program and K
  chunk, so every tap is ``acc = dot(x_tap, W_tap, acc)`` (accumulates in place,
  pipelinable, no per-tap epilogue or input rescale). K²·Kp·Op MACs: the BCB
  BSConv 64→64, 36,864 (the CUDA ``bcb_front`` fuses it with the ConvNeXt
  block instead).
- ``"im2col"``: when K²·Cin fits one chunk (conv1: 27 → 32 columns) the
  (tap, channel) pairs are the GEMM's K dimension: one dot per tile,
  32·64 = 2,048 MACs for conv1 instead of 9·16·64 = 9,216.
- ``"two_pass"``: when the input is wider than one chunk (``conv2``: Cin 384)
  or Cout is padded (the x4 upsampler's 48 → 64), the pointwise GEMM runs once
  per input pixel (:func:`bsconv_kernel` with ``PW_ONLY``: ``z = (pw·diag(s_n))ᵀ x``,
  the CCA scales folded into per-sample weights), then :func:`depthwise_kernel`
  does taps + bias + activation + residual + shuffle store from ``z``.
  conv2: 384·64 = 24,576 MACs instead of 221,184, for one extra write and read
  of the 64-channel ``z`` (256 B per pixel in fp16); the upsampler 64·64 =
  4,096 instead of 36,864 (192 B per pixel of ``z``).
"""

import torch
import triton
import triton.language as tl

from . import Config, Rule, dot_mode, natural_tile, next_pow2, pick, pixel_tile
from .convnext import gelu_fast
from .window import tap_window

IM2COL_MAX_K = 64  # the widest (tap, channel) GEMM K the im2col form takes in one chunk


def dataflow(cin: int, cout: int, ksize: int) -> str:
    """``"im2col"``, ``"implicit"`` or ``"two_pass"`` for a ``cin → cout`` BSConv with ``ksize`` taps per side.

    Tensor MACs per pixel: im2col ``next_pow2(K²·Cin)·Op``; implicit ``K²·Cin_p·Op``;
    two-pass ``Cin_p·Op`` plus a write and a read of the ``cout``-channel pointwise map.
    Two passes when the fold would repeat a wide GEMM per tap (Cin > one 64-chunk)
    or multiply padded output columns per tap (Cout not a power of two ≥ 16).
    """
    if ksize == 1:
        return "implicit"
    if ksize * ksize * cin <= IM2COL_MAX_K:
        return "im2col"
    cout_pad = next_pow2(cout)
    return "two_pass" if cin > 64 or cout_pad != cout else "implicit"


_ACT_RELU = tl.constexpr(1)
_ACT_GELU = tl.constexpr(2)


@triton.jit
def _finish(
    acc,  # [BLOCK_P, COUT_PAD] fp32: the conv result before bias
    b_ptr,
    res_ptr,
    y_ptr,
    n,
    oh,
    ow,
    offs_o,
    p_mask,
    o_mask,
    srn,
    src,
    srh,
    srw,
    syn,
    syc,
    syh,
    syw,
    HAS_BIAS: tl.constexpr,
    ACT: tl.constexpr,
    SHUFFLE: tl.constexpr,
    HAS_RES: tl.constexpr,
):
    # y = act(acc + b) + res, stored with the pixel shuffle: channel o -> (c, i, j) = (o // r², (o // r) % r, o % r)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_o, mask=o_mask, other=0.0)[None, :]
    if ACT == _ACT_RELU:
        # relu that keeps NaN like torch.relu (the GPU's max.f32 returns the non-NaN operand)
        acc = tl.where(acc != acc, acc, tl.maximum(acc, 0.0))
    if ACT == _ACT_GELU:
        acc = gelu_fast(acc)  # exact-erf GELU to 1e-6 in erf (kernels/convnext.py)
    c = offs_o // (SHUFFLE * SHUFFLE)
    si = (offs_o // SHUFFLE) % SHUFFLE
    sj = offs_o % SHUFFLE
    oh_r = oh * SHUFFLE
    ow_r = ow * SHUFFLE
    mask = p_mask[:, None] & o_mask[None, :]
    if HAS_RES:
        r_off = oh_r[:, None] * srh + ow_r[:, None] * srw + (c * src + si * srh + sj * srw)[None, :]
        acc += tl.load(res_ptr + n * srn + r_off, mask=mask, other=0.0).to(tl.float32)
    y_off = oh_r[:, None] * syh + ow_r[:, None] * syw + (c * syc + si * syh + sj * syw)[None, :]
    tl.store(y_ptr + n * syn + y_off, acc.to(y_ptr.dtype.element_ty), mask=mask)


# Sizes are not specialised on the value 1 (a 1x1 map, ESA's low-res branch of a
# 15x15 input): those rare variants made ptxas spill 8 B, the generic code does not.
@triton.jit(do_not_specialize=["H", "W", "HO", "WO"])
def bsconv_kernel(
    # pointers
    x_ptr,  # [N, CIN, H, W] storage dtype, any strides (NCHW, NHWC, channel slice)
    s_ptr,  # [N, CIN] fp32 per-(n, cin) input scale; read only if HAS_SCALE
    pw_ptr,  # [CIN, COUT] compute dtype, contiguous: pwᵀ
    dw_ptr,  # [KSIZE*KSIZE, COUT] fp32, contiguous: depthwise taps (row-major tap = kh*KSIZE + kw); unread if PW_ONLY
    b_ptr,  # [COUT] fp32: depthwise bias; unread if PW_ONLY
    res_ptr,  # [N, COUT // SHUFFLE², HO*SHUFFLE, WO*SHUFFLE] storage dtype, any strides; read only if HAS_RES
    y_ptr,  # [N, COUT // SHUFFLE², HO*SHUFFLE, WO*SHUFFLE] storage dtype, any strides
    # sizes
    CIN,  # input channels (3, 16, 64 or 384 in BCRN)
    COUT,  # pointwise/depthwise channels (before the pixel shuffle)
    H,  # input height
    W,  # input width
    HO,  # output height before the shuffle: (H + 2*PAD - KSIZE) // STRIDE + 1
    WO,  # output width before the shuffle
    # strides (elements)
    sxn,  # x, dim N
    sxc,  # x, dim C
    sxh,  # x, dim H
    sxw,  # x, dim W
    ssn,  # s, dim N
    ssc,  # s, dim C
    srn,  # res (output layout, after the shuffle), dim N
    src,  # res (output layout, after the shuffle), dim C
    srh,  # res (output layout, after the shuffle), dim H
    srw,  # res (output layout, after the shuffle), dim W
    syn,  # y (after the shuffle), dim N
    syc,  # y (after the shuffle), dim C
    syh,  # y (after the shuffle), dim H
    syw,  # y (after the shuffle), dim W
    # meta-parameters: constexpr because they fix the tap loop (KSIZE), the
    # address arithmetic (STRIDE, PAD, SHUFFLE), which code exists (ACT,
    # HAS_SCALE, HAS_RES, IM2COL, PW_ONLY, PRECISION) and the register tile shapes (BLOCK_*)
    KSIZE: tl.constexpr,  # depthwise kernel size (1 or 3)
    STRIDE: tl.constexpr,  # depthwise stride (1 or 2)
    PAD: tl.constexpr,  # zero padding of the depthwise conv
    ACT: tl.constexpr,  # 0 none, 1 relu, 2 exact (erf) GELU
    SHUFFLE: tl.constexpr,  # pixel-shuffle factor r of the store (1 = plain store)
    HAS_SCALE: tl.constexpr,  # fold s[n, :] into the weights (scale on load)
    HAS_RES: tl.constexpr,  # add res after the activation
    IM2COL: tl.constexpr,  # K = the KSIZE²·CIN (tap, channel) pairs in one chunk (BLOCK_K >= KSIZE²·CIN)
    PW_ONLY: tl.constexpr,  # first pass of the two-pass form: y = (pw·diag(s))ᵀ x, no taps, no bias (KSIZE 1)
    BLOCK_P: tl.constexpr,  # output pixels per program (power of two >= 16)
    BLOCK_K: tl.constexpr,  # GEMM K per chunk (power of two, 16..64)
    COUT_PAD: tl.constexpr,  # next power of two >= max(COUT, 16)
    PRECISION: tl.constexpr,  # tl.dot input_precision for fp32 operands ("ieee" | "tf32")
    DOT_IN_FP32: tl.constexpr,  # upcast half operands to fp32 before tl.dot: only under the interpreter with
    # bf16, whose dot multiplies raw bf16 bit patterns (Triton 3.9); exact, so results match the GPU path
    WIDE_INDEX: tl.constexpr,  # int64 in-image offsets: some tensor's largest element offset is >= 2^31
    # (ops._common.needs_wide_index; e.g. the 384-channel buffer of a > 5.59 M-pixel image); else i32 math
):
    # One program owns BLOCK_P consecutive output pixels (row-major over HO x WO) of ONE image times all
    # COUT channels: grid = (cdiv(HO·WO, BLOCK_P), N). Per K chunk it loads pwᵀ [BLOCK_K, COUT_PAD] once,
    # folds s (and per tap dw[tap]) into it in fp32, rounds to the GEMM dtype, and accumulates
    # dot(x_tap [BLOCK_P, BLOCK_K], W_tap [BLOCK_K, COUT_PAD]) in fp32 on tensor cores (FMA loops for
    # fp32 "ieee"). Bytes: the x tile (K² shifted reads, mostly L1/L2 hits) + y; weights from L2.
    tl.static_assert(not PW_ONLY or KSIZE == 1, "the pointwise pass has no taps")
    pid_p = tl.program_id(0)
    n = tl.program_id(1).to(tl.int64)

    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)  # [BLOCK_P] output pixel index (< HO·WO < 2^31)
    p_mask = offs_p < HO * WO
    oh = offs_p // WO
    ow = offs_p % WO
    offs_o = tl.arange(0, COUT_PAD)  # [COUT_PAD] output channel
    o_mask = offs_o < COUT
    offs_k = tl.arange(0, BLOCK_K)  # [BLOCK_K] GEMM K index within the chunk
    if WIDE_INDEX:
        # Every in-image offset below is a sum of (row, column, channel) index × stride terms; with int64
        # indices each product and sum is int64 (i32 strides are promoted), so no term can wrap.
        oh = oh.to(tl.int64)
        ow = ow.to(tl.int64)
        offs_o = offs_o.to(tl.int64)
        offs_k = offs_k.to(tl.int64)

    x_img = x_ptr + n * sxn
    acc = tl.zeros((BLOCK_P, COUT_PAD), dtype=tl.float32)
    if IM2COL:
        # K index j = tap·CIN + i: W[j, o] = s[n, i]·pw[i, o]·dw[tap, o]; x column j = x[n, i, q·S − P + tap]
        tap = offs_k // CIN
        ci = offs_k - tap * CIN
        j_mask = offs_k < KSIZE * KSIZE * CIN
        wj = tl.load(pw_ptr + ci[:, None] * COUT + offs_o[None, :], mask=j_mask[:, None] & o_mask[None, :], other=0.0)
        wf = wj.to(tl.float32) * tl.load(
            dw_ptr + tap[:, None] * COUT + offs_o[None, :], mask=j_mask[:, None] & o_mask[None, :], other=0.0
        )
        if HAS_SCALE:
            wf = wf * tl.load(s_ptr + n * ssn + ci * ssc, mask=j_mask, other=0.0)[:, None]
        ih, iw, inside = tap_window(
            oh[:, None], ow[:, None], tap[None, :], p_mask[:, None] & j_mask[None, :], H, W, KSIZE, STRIDE, PAD
        )
        xt = tl.load(x_img + ih * sxh + iw * sxw + (ci * sxc)[None, :], mask=inside, other=0.0)
        if DOT_IN_FP32:  # exact upcast of the rounded operands (interpreter bf16 workaround)
            acc = tl.dot(xt.to(tl.float32), wf.to(wj.dtype).to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(xt, wf.to(wj.dtype), acc, input_precision=PRECISION)
    else:
        # Both loops are scf.for (not unrolled): one shifted tile is live at a time, which keeps
        # registers bounded and lets the pipeliner prefetch the next tap's tile under the dot.
        for k0 in range(0, CIN, BLOCK_K):
            ck = k0 + offs_k
            k_mask = ck < CIN
            # pwᵀ chunk [BLOCK_K, COUT_PAD], zero rows/columns for padded channels
            pw = tl.load(
                pw_ptr + ck[:, None] * COUT + offs_o[None, :], mask=k_mask[:, None] & o_mask[None, :], other=0.0
            )
            pws = pw.to(tl.float32)
            if HAS_SCALE:
                pws = pws * tl.load(s_ptr + n * ssn + ck * ssc, mask=k_mask, other=0.0)[:, None]
            for tap in range(KSIZE * KSIZE):
                ih, iw, inside = tap_window(oh, ow, tap, p_mask, H, W, KSIZE, STRIDE, PAD)
                xt = tl.load(
                    x_img + (ih * sxh + iw * sxw)[:, None] + (ck * sxc)[None, :],
                    mask=inside[:, None] & k_mask[None, :],
                    other=0.0,
                )  # [BLOCK_P, BLOCK_K] storage dtype
                if PW_ONLY:
                    wt = pws.to(pw.dtype)  # pw·diag(s_n), rounded once
                else:
                    d = tl.load(dw_ptr + tap * COUT + offs_o, mask=o_mask, other=0.0)  # [COUT_PAD] fp32
                    wt = (pws * d[None, :]).to(pw.dtype)  # W_tap = diag(s_n)·pw·diag(dw_tap)
                if DOT_IN_FP32:  # exact upcast of the rounded operands (interpreter bf16 workaround)
                    acc = tl.dot(xt.to(tl.float32), wt.to(tl.float32), acc, input_precision="ieee")
                else:
                    acc = tl.dot(xt, wt, acc, input_precision=PRECISION)  # [BLOCK_P, COUT_PAD] fp32

    _finish(
        acc, b_ptr, res_ptr, y_ptr, n, oh, ow, offs_o, p_mask, o_mask,
        srn, src, srh, srw, syn, syc, syh, syw,
        not PW_ONLY, ACT, SHUFFLE, HAS_RES,
    )  # fmt: skip


@triton.jit(do_not_specialize=["H", "W", "HO", "WO"])
def depthwise_kernel(
    z_ptr,  # [N, C, H, W] storage dtype, any strides: the pointwise map of the two-pass form
    dw_ptr,  # [KSIZE*KSIZE, C] fp32, contiguous: depthwise taps
    b_ptr,  # [C] fp32: depthwise bias
    res_ptr,  # [N, C // SHUFFLE², HO*SHUFFLE, WO*SHUFFLE] storage dtype; read only if HAS_RES
    y_ptr,  # [N, C // SHUFFLE², HO*SHUFFLE, WO*SHUFFLE] storage dtype
    C,  # channels
    H,  # input height
    W,  # input width
    HO,  # output height before the shuffle
    WO,  # output width before the shuffle
    szn,  # z, dim N
    szc,  # z, dim C
    szh,  # z, dim H
    szw,  # z, dim W
    srn,  # res, dim N
    src,  # res, dim C
    srh,  # res, dim H
    srw,  # res, dim W
    syn,  # y, dim N
    syc,  # y, dim C
    syh,  # y, dim H
    syw,  # y, dim W
    KSIZE: tl.constexpr,  # depthwise kernel size
    STRIDE: tl.constexpr,  # depthwise stride
    PAD: tl.constexpr,  # zero padding
    ACT: tl.constexpr,  # 0 none, 1 relu, 2 exact (erf) GELU
    SHUFFLE: tl.constexpr,  # pixel-shuffle factor of the store (1 = plain)
    HAS_RES: tl.constexpr,  # add res after the activation
    BLOCK_P: tl.constexpr,  # output pixels per program
    C_PAD: tl.constexpr,  # next power of two >= max(C, 16)
    WIDE_INDEX: tl.constexpr,  # int64 in-image offsets (as in bsconv_kernel)
):
    # y[n, o, q] = act(b[o] + Σ_tap dw[tap, o] · z[n, o, q·S − P + tap]) + res[n, o, q] (zero padding),
    # shuffled store as in bsconv_kernel. One program: BLOCK_P output pixels x all C channels of one image,
    # grid = (cdiv(HO·WO, BLOCK_P), N). K² FMAs per output element, no tensor work; bytes: z once from DRAM
    # (the K² shifted tiles overlap in L1/L2) + y (+ res). The tap loop is an scf.for (unrolled, the K²
    # tiles were all live at once and spilled 250-540 B at [128, 64]).
    pid_p = tl.program_id(0)
    n = tl.program_id(1).to(tl.int64)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    p_mask = offs_p < HO * WO
    oh = offs_p // WO
    ow = offs_p % WO
    offs_o = tl.arange(0, C_PAD)
    o_mask = offs_o < C
    if WIDE_INDEX:
        oh = oh.to(tl.int64)
        ow = ow.to(tl.int64)
        offs_o = offs_o.to(tl.int64)
    z_img = z_ptr + n * szn
    acc = tl.zeros((BLOCK_P, C_PAD), dtype=tl.float32)
    for tap in range(KSIZE * KSIZE):
        ih, iw, inside = tap_window(oh, ow, tap, p_mask, H, W, KSIZE, STRIDE, PAD)
        zt = tl.load(
            z_img + (ih * szh + iw * szw)[:, None] + (offs_o * szc)[None, :],
            mask=inside[:, None] & o_mask[None, :],
            other=0.0,
        )
        d = tl.load(dw_ptr + tap * C + offs_o, mask=o_mask, other=0.0)
        acc += zt.to(tl.float32) * d[None, :]
    _finish(
        acc, b_ptr, res_ptr, y_ptr, n, oh, ow, offs_o, p_mask, o_mask,
        srn, src, srh, srw, syn, syc, syh, syw,
        True, ACT, SHUFFLE, HAS_RES,
    )  # fmt: skip


# --------------------------------------------------------------------------- launch configurations
# From ptxas resource usage of the AOT-compiled kernel (``python -m bcrn_fast.aot``, sm_80, sm_86, sm_89 and
# sm_90 under Triton 3.6 and 3.9); every row is spill-free on all of them. Facts: ``mode`` "ieee" (fp32 FMA
# dots, no tensor cores, nothing to pipeline), "tf32" (fp32) or "half" (fp16/bf16); ``narrow``: the tile is
# at most 16 channels wide (Cout and the K chunk); ``cout_pad``; ``wide``: the int64 offset path (images past
# 2^31 element offsets, more address registers); ``big``: the unshrunk tile reaches [128, 64] elements;
# ``pw_only``: the pointwise pass of the two-pass form (KSIZE 1, per-sample folded weights).
# Tensor-core rows (tf32, half) never shrink with the map: the shrunk tiles are not spill-free under Triton
# 3.6 ([16, 64] tf32 8 B on sm_90, half 32 B on sm_80; [16, 32] tf32 8 B on sm_80).
# fmt: off
CONFIGS = (
    Rule({"pw_only": True, "mode": "ieee"}, Config(16, 4, 1, block_k=32, why="as the ieee 64-channel row below")),
    Rule({"pw_only": True, "cout_pad": 64}, Config(128, 8, 3, block_k=32, shrink=False, why="conv2's pointwise pass (Cin 384, s folded into pw): K chunks of 64 spill 16 B on sm_80/sm_86 (Triton 3.9)")),  # noqa: E501
    Rule({"narrow": True, "mode": "ieee"}, Config(32, 4, 1, shrink=False, why="ESA low-res branch: [16, 16] spills 8 B on 2 or 4 warps")),  # noqa: E501
    Rule({"narrow": True, "wide": True}, Config(32, 2, 2, shrink=False, why="int64 offsets: [32, 16] on 4 warps spills 8 B on sm_80 with 1 (Triton 3.6) or 2 stages (3.9); 2 warps, 1 stage spills on sm_80/sm_90")),  # noqa: E501
    Rule({"narrow": True}, Config(32, 4, 2, shrink=False, why="[32, 16] on 4 warps; 3 stages spill 8 B on sm_86 (tf32, Triton 3.9) with the per-tap weight fold")),  # noqa: E501
    Rule({"mode": "ieee", "cout_pad": 64, "wide": True}, Config(16, 8, 1, block_k=32, why="int64 offsets: 4 warps spill 8 B on sm_80 (Triton 3.9)")),  # noqa: E501
    Rule({"mode": "ieee", "cout_pad": 64}, Config(16, 4, 1, block_k=32, why="BLOCK_K 64 spills 8 B on sm_86/sm_89 (Triton 3.6, 4 warps; 2 or 8 warps spill on sm_80/sm_90)")),  # noqa: E501
    Rule({"mode": "ieee"}, Config(16, 4, 1, why="FMA dots spill above BLOCK_P 16 at 64 channels")),
    Rule({"mode": "tf32", "cout_pad": 32}, Config(32, 4, 2, shrink=False, why="32-wide tiles (the x3 upsampler is two-pass now): 2 warps spill 8-40 B on the int64 path (Triton 3.9)")),  # noqa: E501
    Rule({"mode": "tf32"}, Config(64, 4, 2, block_k=16, shrink=False, why="docs/occupancy.md: 116-140 registers, 3-4 programs per SM, no spills; 31-39 % fewer instructions and half the L2 weight reads of [32, 4 warps, K 64] (230 registers)")),  # noqa: E501
    Rule({"mode": "half", "cout_pad": 32}, Config(64, 4, 3, shrink=False, why="x3 upsampler: [128, 32] on 8 warps spills 8 B on sm_86/sm_89 (Triton 3.6)")),  # noqa: E501
    Rule({"mode": "half", "big": True, "wide": True}, Config(64, 8, 3, shrink=False, why="int64 offsets: 128 pixels spill 8-24 B on sm_80, sm_86/sm_89 (4 or 8 warps)")),  # noqa: E501
    Rule({"mode": "half", "big": True}, Config(128, 4, 3, block_k=16, shrink=False, why="docs/occupancy.md: K chunks of 16 on 4 warps, 164-182 registers, 2-3 programs per SM, no spills; 22-28 % fewer instructions than [128, 8 warps, K 64] (136-192 registers, 1 program; K 64 on 4 warps spills)")),  # noqa: E501
    Rule({"mode": "half", "wide": True}, Config(64, 4, 3, shrink=False, why="int64 offsets, 32-wide tiles: [128, 32] on 4 warps spills (Triton 3.9, sm_80/sm_90)")),  # noqa: E501
    Rule({"mode": "half"}, Config(128, 4, 3, shrink=False, why="tiles below [128, 64]: 4 warps, no spills")),
)
# fmt: on


def launch_config(
    hw: int,
    cout_pad: int,
    block_k: int,
    dtype: torch.dtype,
    precision: str,
    wide_index: bool = False,
    pw_only: bool = False,
) -> tuple[int, int, int, int]:
    """(BLOCK_P, BLOCK_K, num_warps, num_stages) of ``CONFIGS`` for an ``hw``-pixel output map
    (``pw_only``: the pointwise pass of the two-pass form)."""
    width = max(cout_pad, block_k)
    mode = dot_mode(dtype, precision)
    big = natural_tile(None, width) * width >= 128 * 64
    config = pick(CONFIGS, mode=mode, narrow=width <= 16, cout_pad=cout_pad, wide=wide_index, big=big, pw_only=pw_only)
    block_k = min(block_k, config.block_k) if config.block_k else block_k
    return pixel_tile(config, hw, width), block_k, config.num_warps, config.num_stages


# The depthwise pass: no tensor work, [BLOCK_P, C_PAD] fp32 accumulators and K² tiles in flight.
# fmt: off
DW_CONFIGS = (
    Rule({}, Config(64, 4, 1, why="[64, 64] fp32 accumulator on 4 warps; [128, 64] unrolled spilled 250-540 B")),
)
# fmt: on


def dw_launch_config(hw: int, c_pad: int) -> tuple[int, int]:
    """(BLOCK_P, num_warps) of ``DW_CONFIGS`` for an ``hw``-pixel output map of ``c_pad``-wide tiles."""
    config = pick(DW_CONFIGS)
    return pixel_tile(config, hw, c_pad), config.num_warps
