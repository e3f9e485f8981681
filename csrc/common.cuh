// Shared device helpers of the bcrn_fast kernels: dtype conversion, activations,
// the halo-tile loader, and host-side launch plumbing (device guard, shared
// memory opt-in, launch-error check).
#pragma once

#include "bcrn_kernels.h"

#ifdef BCRN_EMULATE
#include "emu/cuda_emu.h"
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
// Dynamic shared memory, 128-byte aligned (ldmatrix rows need 16 bytes).
#define BCRN_DYNAMIC_SMEM(name) extern __shared__ __align__(128) unsigned char name[]
#define BCRN_LAUNCH(kernel, grid, block, smem, stream, ...) kernel<<<grid, block, smem, stream>>>(__VA_ARGS__)
#endif

#include <atomic>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace bcrn {

constexpr int kThreads = 256;  // every kernel: 8 warps per block
constexpr int kWarps = kThreads / 32;

// ----------------------------------------------------------------- dtypes

template <class T>
struct Num;
template <>
struct Num<float> {
    static __device__ __forceinline__ float to_f(float v) { return v; }
    static __device__ __forceinline__ float from_f(float v) { return v; }
};
template <>
struct Num<__half> {
    static __device__ __forceinline__ float to_f(__half v) { return __half2float(v); }
    static __device__ __forceinline__ __half from_f(float v) { return __float2half_rn(v); }
};
template <>
struct Num<__nv_bfloat16> {
    static __device__ __forceinline__ float to_f(__nv_bfloat16 v) { return __bfloat162float(v); }
    static __device__ __forceinline__ __nv_bfloat16 from_f(float v) { return __float2bfloat16_rn(v); }
};

template <class T>
__device__ __forceinline__ float to_f(T v) {
    return Num<T>::to_f(v);
}
template <class T>
__device__ __forceinline__ T from_f(float v) {
    return Num<T>::from_f(v);
}

// fp16/bf16 storage: GEMM operands in that dtype on tensor cores (ldmatrix +
// mma.sync m16n8k16, fp32 accumulate, tc.cuh). fp32 storage: IEEE fp32 FMA on the SIMT cores.
template <class T>
constexpr bool kTensorCores = !std::is_same<T, float>::value;

// Minimum resident blocks per SM for __launch_bounds__: 2 caps registers at 128
// (65536 / (256 · 2)). A cap of 80 (3 blocks) makes ptxas spill the
// tensor-core MLP; 128 is spill-free for every kernel on sm_80..sm_90.
constexpr int kMinBlocks = 2;

// ----------------------------------------------------------------- math

__device__ __forceinline__ float gelu_erf(float v) { return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f)); }

__device__ __forceinline__ float activate(float v, int act) {
    if (act == kActRelu) return v < 0.0f ? 0.0f : v;  // NaN stays NaN, as torch.relu
    if (act == kActGelu) return gelu_erf(v);
    return v;
}

__device__ __forceinline__ float sigmoid_f(float v) { return 1.0f / (1.0f + expf(-v)); }

// 16-byte shared-memory load (LDS.128); the emulator checks the alignment the GPU requires.
__device__ __forceinline__ float4 load4(const float* p) {
#ifdef BCRN_EMULATE
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) ::emu::fail("float4 load from an address not 16-byte aligned");
#endif
    return *reinterpret_cast<const float4*>(p);
}

__host__ __device__ constexpr int cdiv(int a, int b) { return (a + b - 1) / b; }
__host__ __device__ constexpr int round_up(int a, int b) { return cdiv(a, b) * b; }

// ----------------------------------------------------------------- halo tile loader

// dst[p * ld + c] = s[c0 + c] · x[y0 + p / ww, x0 + p % ww, c0 + c]   for p < rows_pad, c < kc
// (x = one image, element strides sx). Zero where the pixel is outside the
// image, p >= hh·ww (padding rows of an MMA tile) or c0 + c >= C. The value is
// rounded to ST (the GEMM operand dtype) after the scale, as the Triton kernel does.
// c_fast: consecutive threads take consecutive channels (coalesced for
// channels-last input); otherwise consecutive pixels (coalesced for NCHW).
template <class T, class ST>
__device__ __forceinline__ void load_tile(ST* __restrict__ dst, int ld, int kc, const T* __restrict__ img,
                                          Strides4 sx, int H, int W, int y0, int x0, int hh, int ww, int rows_pad,
                                          int c0, int C, const float* __restrict__ scale, int64_t ssc, bool c_fast) {
    const int hp = hh * ww;
    const int total = rows_pad * kc;
    for (int i = threadIdx.x; i < total; i += kThreads) {
        int c, p;
        if (c_fast) {
            c = i % kc;
            p = i / kc;
        } else {
            p = i % rows_pad;
            c = i / rows_pad;
        }
        const int cc = c0 + c;
        float v = 0.0f;
        if (p < hp && cc < C) {
            const int iy = y0 + p / ww;
            const int ix = x0 + p % ww;
            if (iy >= 0 && iy < H && ix >= 0 && ix < W) {
                v = to_f(img[iy * sx.h + ix * sx.w + cc * sx.c]);
                if (scale != nullptr) v *= scale[cc * ssc];
            }
        }
        dst[p * ld + c] = from_f<ST>(v);
    }
}

// ----------------------------------------------------------------- host plumbing

// Makes `device` current for the launch and restores the previous device.
struct DeviceGuard {
    int prev = -1;
    explicit DeviceGuard(int device) {
        if (cudaGetDevice(&prev) != cudaSuccess) prev = -1;
        if (device >= 0 && device != prev) {
            cudaError_t e = cudaSetDevice(device);
            if (e != cudaSuccess)
                throw std::runtime_error(std::string("bcrn_fast._C: cudaSetDevice failed: ") + cudaGetErrorString(e));
        } else {
            prev = -1;
        }
    }
    ~DeviceGuard() {
        if (prev >= 0) cudaSetDevice(prev);
    }
};

// Raises the launch error (if any) as std::runtime_error; clears it first so a
// failed launch does not poison the next call.
inline void check_launch(const char* what) {
    cudaError_t e = cudaPeekAtLastError();
    if (e != cudaSuccess) {
        cudaGetLastError();
        throw std::runtime_error(std::string("bcrn_fast._C: launch of ") + what + " failed: " + cudaGetErrorString(e));
    }
}

// Opt a kernel into more than 48 KB of dynamic shared memory (once per device)
// and check that the device can give `bytes` to one block.
template <class Kernel>
inline void prepare_smem(Kernel kernel, int64_t bytes, int device, std::atomic<uint64_t>& done, const char* what) {
    const int dev_bit = device >= 0 && device < 64 ? device : 63;
    if (done.load() & (uint64_t(1) << dev_bit)) return;
    int max_optin = 0;
    cudaError_t e = cudaDeviceGetAttribute(&max_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device < 0 ? 0 : device);
    if (e != cudaSuccess)
        throw std::runtime_error(std::string("bcrn_fast._C: cannot query the device: ") + cudaGetErrorString(e));
    if (bytes > max_optin)
        throw std::runtime_error(std::string("bcrn_fast._C: ") + what + " needs " + std::to_string(bytes) +
                                 " bytes of shared memory per block but the device allows " +
                                 std::to_string(max_optin));
    e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes));
    if (e != cudaSuccess) {
        cudaGetLastError();
        throw std::runtime_error(std::string("bcrn_fast._C: cannot set the shared memory of ") + what + ": " +
                                 cudaGetErrorString(e));
    }
    done.fetch_or(uint64_t(1) << dev_bit);
}

inline void require(bool ok, const std::string& msg) {
    if (!ok) throw std::invalid_argument("bcrn_fast._C: " + msg);
}

}  // namespace bcrn
