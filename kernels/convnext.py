"""ConvNeXt inverse bottleneck (BCRN's ``convNextBlock``) fused into one Triton kernel.

depthwise 3x3 (+bias) -> 1x1 C->HID (+bias) -> exact GELU -> 1x1 HID->C (+bias)
-> + residual, with the HID-wide hidden tile never leaving the chip, and an
optional epilogue writing the 16-channel ESA pre-map. Launcher, checks and
dispatch: ``bcrn_fast.ops.convnext``.
"""

import triton
import triton.language as tl

_INV_SQRT2 = tl.constexpr(0.7071067811865476)  # 1/sqrt(2) for the exact GELU


@triton.jit
def convnext_kernel(
    # pointers
    t_ptr,  # [N, C, H, W] storage dtype, any strides: block input (and residual)
    dw_ptr,  # [9, C] fp32, contiguous: depthwise 3x3 taps (tap = kh*3 + kw)
    bd_ptr,  # [C] fp32: depthwise bias
    w1_ptr,  # [C, HID] compute dtype, contiguous: expand weight W1ᵀ
    b1_ptr,  # [HID] fp32
    w2_ptr,  # [HID, C] compute dtype, contiguous: reduce weight W2ᵀ
    b2_ptr,  # [C] fp32
    aw_ptr,  # [C, E] compute dtype, contiguous: folded ESA pre-map A; read only if HAS_ESA
    ab_ptr,  # [E] fp32: folded ESA pre-map bias a0; read only if HAS_ESA
    y_ptr,  # [N, C, H, W] storage dtype, any strides: block output
    a_ptr,  # [N, E, H, W] storage dtype, any strides: ESA pre-map; written only if HAS_ESA
    # sizes
    C,  # feature channels (64 in BCRN)
    HID,  # hidden channels (4·C = 256 in BCRN)
    E,  # ESA pre-map channels (16 in BCRN)
    H,  # height
    W,  # width
    # strides (elements)
    stn,  # t, dim N
    stc,  # t, dim C
    sth,  # t, dim H
    stw,  # t, dim W
    syn,  # y, dim N
    syc,  # y, dim C
    syh,  # y, dim H
    syw,  # y, dim W
    san,  # a, dim N
    sac,  # a, dim C
    sah,  # a, dim H
    saw,  # a, dim W
    # meta-parameters: constexpr because they fix register tile shapes
    # (BLOCK_*, *_PAD), which code exists (HAS_ESA) and the dot mode (PRECISION)
    HAS_ESA: tl.constexpr,  # also write a = yᵀ·A + a0
    BLOCK_P: tl.constexpr,  # pixels per program (power of two >= 16)
    C_PAD: tl.constexpr,  # next power of two >= max(C, 16)
    HID_BLOCK: tl.constexpr,  # hidden channels per chunk (power of two >= 16; 64)
    E_PAD: tl.constexpr,  # next power of two >= max(E, 16)
    PRECISION: tl.constexpr,  # tl.dot input_precision for fp32 operands ("ieee" | "tf32")
    DOT_IN_FP32: tl.constexpr,  # upcast half operands to fp32 before tl.dot: only under the interpreter with
    # bf16, whose dot multiplies raw bf16 bit patterns (Triton 3.9); exact, so results match the GPU path
):
    # z = b_d + Σ_tap dw[tap] ⊙ t[p + tap]                    (3x3, pad 1, zero outside)
    # y = t + Σ_chunks GELU(z·W1[:, chunk] + b1[chunk])·W2[chunk, :] + b2
    # a = y·A + a0                                             (if HAS_ESA)
    # One program owns BLOCK_P consecutive pixels (row-major over H x W) of ONE
    # image times all C channels: grid = (cdiv(H·W, BLOCK_P), N). z, the
    # hidden chunk h [BLOCK_P, HID_BLOCK] and the accumulator stay on chip in
    # fp32; GEMM operands are rounded to the compute dtype right before tl.dot.
    pid_p = tl.program_id(0)
    n = tl.program_id(1).to(tl.int64)

    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)  # [BLOCK_P] pixel index
    p_mask = offs_p < H * W
    qh = offs_p // W
    qw = offs_p % W
    offs_c = tl.arange(0, C_PAD)  # [C_PAD] channel
    c_mask = offs_c < C

    # depthwise 3x3 (scf.for over taps: one shifted tile live at a time)
    t_img = t_ptr + n * stn
    z = tl.zeros((BLOCK_P, C_PAD), dtype=tl.float32)
    for tap in range(9):
        ih = qh - 1 + tap // 3
        iw = qw - 1 + tap % 3
        inside = p_mask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        tt = tl.load(
            t_img + (ih * sth + iw * stw)[:, None] + (offs_c * stc)[None, :],
            mask=inside[:, None] & c_mask[None, :],
            other=0.0,
        ).to(tl.float32)  # [BLOCK_P, C_PAD]
        d = tl.load(dw_ptr + tap * C + offs_c, mask=c_mask, other=0.0)  # [C_PAD] fp32
        z += tt * d[None, :]
    z += tl.load(bd_ptr + offs_c, mask=c_mask, other=0.0)[None, :]
    zc = z.to(w1_ptr.dtype.element_ty)  # GEMM operand in the compute dtype

    # inverse bottleneck, hidden dimension in chunks of HID_BLOCK
    acc = tl.zeros((BLOCK_P, C_PAD), dtype=tl.float32)
    for h0 in range(0, HID, HID_BLOCK):
        offs_h = h0 + tl.arange(0, HID_BLOCK)  # [HID_BLOCK]
        h_mask = offs_h < HID
        w1 = tl.load(
            w1_ptr + offs_c[:, None] * HID + offs_h[None, :], mask=c_mask[:, None] & h_mask[None, :], other=0.0
        )  # [C_PAD, HID_BLOCK]
        if DOT_IN_FP32:  # exact upcast of the rounded operands (interpreter bf16 workaround)
            h = tl.dot(zc.to(tl.float32), w1.to(tl.float32), input_precision="ieee")
        else:
            h = tl.dot(zc, w1, input_precision=PRECISION)  # [BLOCK_P, HID_BLOCK] fp32
        h += tl.load(b1_ptr + offs_h, mask=h_mask, other=0.0)[None, :]
        h = 0.5 * h * (1.0 + tl.erf(h * _INV_SQRT2))
        w2 = tl.load(
            w2_ptr + offs_h[:, None] * C + offs_c[None, :], mask=h_mask[:, None] & c_mask[None, :], other=0.0
        )  # [HID_BLOCK, C_PAD]
        if DOT_IN_FP32:
            acc = tl.dot(h.to(w2.dtype).to(tl.float32), w2.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(h.to(w2.dtype), w2, acc, input_precision=PRECISION)

    # residual: the centre tap again (an L1/L2 hit), loaded late to keep it out of the GEMM loop's registers
    pc_mask = p_mask[:, None] & c_mask[None, :]
    resid = tl.load(t_img + (qh * sth + qw * stw)[:, None] + (offs_c * stc)[None, :], mask=pc_mask, other=0.0)
    y = resid.to(tl.float32) + (acc + tl.load(b2_ptr + offs_c, mask=c_mask, other=0.0)[None, :])
    yq = y.to(y_ptr.dtype.element_ty)  # the stored (rounded) block output
    y_off = qh[:, None] * syh + qw[:, None] * syw + offs_c[None, :] * syc
    tl.store(y_ptr + n * syn + y_off, yq, mask=pc_mask)

    if HAS_ESA:
        # ESA pre-map from the stored y (storage dtype == compute dtype)
        offs_e = tl.arange(0, E_PAD)
        e_mask = offs_e < E
        aw = tl.load(
            aw_ptr + offs_c[:, None] * E + offs_e[None, :], mask=c_mask[:, None] & e_mask[None, :], other=0.0
        )  # [C_PAD, E_PAD]
        if DOT_IN_FP32:
            a = tl.dot(yq.to(aw.dtype).to(tl.float32), aw.to(tl.float32), input_precision="ieee")
        else:
            a = tl.dot(yq.to(aw.dtype), aw, input_precision=PRECISION)  # [BLOCK_P, E_PAD] fp32
        a += tl.load(ab_ptr + offs_e, mask=e_mask, other=0.0)[None, :]
        a_off = qh[:, None] * sah + qw[:, None] * saw + offs_e[None, :] * sac
        tl.store(a_ptr + n * san + a_off, a.to(a_ptr.dtype.element_ty), mask=p_mask[:, None] & e_mask[None, :])
