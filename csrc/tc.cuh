// Tensor-core 16x16x16 tiles from shared memory: ldmatrix + mma.sync.m16n8k16 (sm_80+),
// fp16 or bf16 operands, fp32 accumulators. Warp-collective: all 32 lanes call each function.
//
// Why not nvcuda::wmma: with CUDA 13, wmma's bf16 loads are emitted without the
// .shared state space and ptxas lowers them to generic scalar loads (no
// ldmatrix), which costs ~30 registers and 8x the load instructions; explicit
// ldmatrix/mma gives fp16 and bf16 the same code.
//
// Layouts (PTX ISA, "mma.m16n8k16" and "ldmatrix"), g = lane / 4, q = lane % 4:
//   A 16x16 (row-major in smem): ldmatrix.x4, lane l addresses row l % 16, column 8·(l / 16);
//     regs = {A[g][2q..], A[g+8][2q..], A[g][2q+8..], A[g+8][2q+8..]}        (the mma A fragment)
//   B 16x16 (row-major [k][n] in smem): ldmatrix.x4.trans, same lane addressing;
//     regs = {B[2q..][g], B[2q+8..][g], B[2q..][g+8], B[2q+8..][g+8]} = the B fragments of n-halves 0 and 1
//   C 16x16 fp32: c[0..3] = n-half 0, c[4..7] = n-half 1; within a half
//     {C[g][2q], C[g][2q+1], C[g+8][2q], C[g+8][2q+1]}.
// The emulator (emu/cuda_emu.h) implements ldmatrix and mma at this lane level,
// so the addressing below is exercised by the CPU tests.
#pragma once

#include "common.cuh"

namespace bcrn {
namespace tc {

struct FragA {
    uint32_t r[4];
};
struct FragB {
    uint32_t r[4];
};
struct FragC {
    float c[8];
};

__device__ __forceinline__ void zero(FragC& f) {
#pragma unroll
    for (int i = 0; i < 8; ++i) f.c[i] = 0.0f;
}

template <bool kTrans>
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row_ptr) {
#ifdef BCRN_EMULATE
    ::emu::ldmatrix_x4(r, row_ptr, kTrans);
#else
    const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(row_ptr));
    if constexpr (kTrans) {
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(addr));
    } else {
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(addr));
    }
#endif
}

// A tile = &A[row0][k0] (row-major, ld elements, ld·2 and the tile a multiple of 16 bytes)
template <class T>
__device__ __forceinline__ void load_a(FragA& f, const T* tile, int ld) {
    const int lane = threadIdx.x % 32;
    ldmatrix_x4<false>(f.r, tile + (lane % 16) * ld + (lane / 16) * 8);
}

// B tile = &B[k0][n0] (row-major [k][n])
template <class T>
__device__ __forceinline__ void load_b(FragB& f, const T* tile, int ld) {
    const int lane = threadIdx.x % 32;
    ldmatrix_x4<true>(f.r, tile + (lane % 16) * ld + (lane / 16) * 8);
}

template <class T>
__device__ __forceinline__ void mma16816(float (&d)[8], int half, const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
    float* c = d + 4 * half;
#ifdef BCRN_EMULATE
    const uint32_t b[2] = {b0, b1};
    ::emu::mma_m16n8k16<T>(c, a, b);
#else
    if constexpr (std::is_same<T, __half>::value) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
            "{%0, %1, %2, %3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    } else {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
            "{%0, %1, %2, %3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
#endif
}

// C += A · B  (16x16x16)
template <class T>
__device__ __forceinline__ void mma(FragC& c, const FragA& a, const FragB& b) {
    mma16816<T>(c.c, 0, a.r, b.r[0], b.r[1]);
    mma16816<T>(c.c, 1, a.r, b.r[2], b.r[3]);
}

// tile = &C[row0][col0] (fp32, row-major, ld even)
__device__ __forceinline__ void store(float* tile, const FragC& f, int ld) {
    const int lane = threadIdx.x % 32;
    const int g = lane / 4, q = lane % 4;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        float* p = tile + g * ld + h * 8 + 2 * q;
#ifdef BCRN_EMULATE
        if (reinterpret_cast<uintptr_t>(p) % 8 != 0 || ld % 2 != 0) ::emu::fail("float2 store not 8-byte aligned");
#endif
        *reinterpret_cast<float2*>(p) = float2{f.c[4 * h + 0], f.c[4 * h + 1]};
        *reinterpret_cast<float2*>(p + 8 * ld) = float2{f.c[4 * h + 2], f.c[4 * h + 3]};
    }
}

}  // namespace tc
}  // namespace bcrn
