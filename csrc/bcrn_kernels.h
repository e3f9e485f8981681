// Host-side interface of the bcrn_fast CUDA kernels: plain argument structs and
// one launcher per fused op. No CUDA or torch headers here, so the pybind11
// binding (bindings.cpp) compiles with the host compiler alone.
//
// Conventions (the same as bcrn_fast/ops, docs/fused-ops.md):
//   - activations are [N, C, H, W] with arbitrary element strides {n, c, h, w};
//   - storage dtype (kF32, kF16, kBF16) of every activation is the same;
//   - GEMM weights (pw_t, w1, w2, aw) are contiguous, in the compute dtype:
//     the storage dtype for fp16/bf16, fp32 for fp32;
//   - per-channel vectors (depthwise taps [9, C], biases, scales) are fp32, contiguous;
//   - every launcher enqueues on `stream` (a cudaStream_t), on device `device`,
//     checks the launch and throws std::invalid_argument (bad arguments) or
//     std::runtime_error (CUDA error).
#pragma once

#include <cstdint>

namespace bcrn {

enum DType : int { kF32 = 0, kF16 = 1, kBF16 = 2 };
enum Act : int { kActNone = 0, kActRelu = 1, kActGelu = 2 };

struct Strides4 {
    int64_t n, c, h, w;  // element strides
};

// y = act(b + Σ_tap dw[tap] ⊙ (pw_tᵀ · (s ⊙ x)[p·stride − pad + tap])) + res, optional pixel-shuffle store
struct BSConvArgs {
    int dtype;
    const void* x;       // [N, Cin, H, W]
    Strides4 sx;
    const float* scale;  // [N, Cin] fp32 or nullptr
    int64_t ssn, ssc;
    const void* pw;      // [Cin, Cout] compute dtype
    const float* dw;     // [K*K, Cout]
    const float* bias;   // [Cout]
    const void* res;     // output shape (after the shuffle) or nullptr
    Strides4 sr;
    void* y;             // [N, Cout/r², Ho·r, Wo·r]
    Strides4 sy;
    int N, Cin, Cout, H, W, Ho, Wo;
    int ksize, stride, pad, act, shuffle;
};

// ConvNeXt inverse bottleneck (C = 64), optional ESA pre-map epilogue a = yᵀ·A + a0.
struct ConvNeXtArgs {
    int dtype;
    const void* t;       // [N, 64, H, W] block input (also the residual)
    Strides4 st;
    const float* dw;     // [9, 64]
    const float* bd;     // [64]
    const void* w1;      // [64, HID] compute dtype
    const float* b1;     // [HID]
    const void* w2;      // [HID, 64] compute dtype
    const float* b2;     // [64]
    const void* aw;      // [64, E] compute dtype, or nullptr (no ESA epilogue)
    const float* ab;     // [E]
    void* y;             // [N, 64, H, W]
    Strides4 sy;
    void* a;             // [N, E, H, W] or nullptr
    Strides4 sa;
    int N, H, W, hid, E;
};

// BSConv(64 -> 64, 3x3, pad 1, optional input scale) then the ConvNeXt block, one kernel.
struct BCBFrontArgs {
    ConvNeXtArgs cn;     // cn.t / cn.st describe the BCB input x (t1 is never written)
    const float* scale;  // [N, 64] fp32 or nullptr
    int64_t ssn, ssc;
    const void* pw;      // [64, 64] compute dtype: BSConv pwᵀ
    const float* dw0;    // [9, 64]
    const float* b0;     // [64]
};

// s[n, c] = σ(W2ᵀ·relu(W1ᵀ·(mean + std)[n] + b1) + b2)[c], mean/std over H×W per (n, c)
struct CCAArgs {
    const void* x;       // [N, C, H, W], dtype
    int dtype;
    Strides4 sx;
    const float* w1;     // [C, R]
    const float* b1;     // [R]
    const float* w2;     // [R, C]
    const float* b2;     // [C]
    float* s;            // [N, C] fp32 output
    int64_t ssn, ssc;
    float* partials;     // workspace [N, blocks, C, 3] fp32
    unsigned* counters;  // workspace [N], zero before the first launch (the kernel leaves it zero)
    int N, C, R, H, W, blocks;
};

void bsconv(const BSConvArgs& a, int device, void* stream);
void convnext(const ConvNeXtArgs& a, int device, void* stream);
void bcb_front(const BCBFrontArgs& a, int device, void* stream);
void cca_scale(const CCAArgs& a, int device, void* stream);

// Blocks per image of the CCA reduction for an H×W map (a function of the shape
// only, so results are bit-identical run to run and across GPUs).
int cca_blocks(int64_t hw);

// Dynamic shared memory (bytes) one block of each kernel needs, by dtype code.
int64_t bsconv_smem_bytes(int dtype);
int64_t convnext_smem_bytes(int dtype);
int64_t bcb_front_smem_bytes(int dtype);
int64_t cca_smem_bytes(int dtype);

}  // namespace bcrn
