// convnext.cu - BCRN's ConvNeXt inverse bottleneck in one launch (C = 64).
//
//   z[p, :] = b_d + Σ_tap dw[tap] ⊙ t[p + tap]                        (depthwise 3x3, pad 1)
//   y[p, :] = t[p, :] + Σ_chunks GELU(z[p, :] · W1[:, chunk] + b1[chunk]) · W2[chunk, :] + b2
//   a[p, :] = y[p, :] · A + a0                                          (optional ESA pre-map, E ≤ 16 channels)
//
// GELU is the exact erf form. Tile: a block owns TH × TW pixels of ONE image ×
// all 64 channels (grid = (tiles, N)); fp16/bf16: 8 × 16 = 128 pixels, the two
// 1x1 GEMMs on tensor cores (mma.sync m16n8k16 via ldmatrix, fp32 accumulate), hidden chunks of
// 64; fp32: 8 × 8 = 64 pixels, SIMT fp32 FMA, hidden chunks of 32. The
// (TH+2) × (TW+2) halo of t is loaded once into shared memory; z, the hidden
// chunk (GELU'd, rounded to the compute dtype like the Triton kernel's operand)
// and the accumulators stay on chip, so per pixel the kernel reads 64 channels
// (+ halo, + the residual again from L2) and writes 64 (+ E).
#include "tile_gemm.cuh"

namespace bcrn {
namespace {

template <class T>
struct CNConfig {  // fp16 / bf16
    static constexpr int TH = 8, TW = 16, HC = 64;
};
template <>
struct CNConfig<float> {
    static constexpr int TH = 8, TW = 8, HC = 32;
};

template <class T>
struct CNLayout {
    static constexpr int TH = CNConfig<T>::TH, TW = CNConfig<T>::TW, HC = CNConfig<T>::HC;
    using M = Mlp<T, TH * TW, HC>;
    static constexpr int P = TH * TW, HPX = (TH + 2) * (TW + 2);
    static constexpr int64_t zs_off = 0;                                   // z [P][LDZ] compute dtype
    static constexpr int64_t r_off = M::zs_bytes;                          // t halo, then the MLP buffers
    static constexpr int64_t r_bytes = cmax(M::bytes, align128(int64_t(HPX) * 64 * sizeof(T)));
    static constexpr int64_t scr_off = r_off + r_bytes;                    // per-warp MMA scratch
    static constexpr int64_t vec_off = scr_off + M::scr_bytes;             // dw [9][64], bd, b2, b1 chunk
    static constexpr int kVec = 9 * 64 + 64 + 64 + HC;
    static constexpr int64_t bytes = vec_off + kVec * 4;
    static_assert(M::zs_bytes >= (64 * 16 + 16) * 4, "the ESA weights reuse the z buffer");
};

template <class T>
__global__ void __launch_bounds__(kThreads, kMinBlocks) convnext_kernel(ConvNeXtArgs a, int tiles_w) {
    BCRN_DYNAMIC_SMEM(smem);
    using L = CNLayout<T>;
    using M = typename L::M;
    constexpr int TH = L::TH, TW = L::TW, P = L::P;
    T* zs = reinterpret_cast<T*>(smem + L::zs_off);
    unsigned char* rbuf = smem + L::r_off;
    T* ts = reinterpret_cast<T*>(rbuf);
    float* scr = reinterpret_cast<float*>(smem + L::scr_off);
    float* dws = reinterpret_cast<float*>(smem + L::vec_off);
    float* bds = dws + 9 * 64;
    float* b2s = bds + 64;
    float* b1s = b2s + 64;

    const int tid = threadIdx.x;
    const int n = blockIdx.y;
    const int oy0 = int(blockIdx.x) / tiles_w * TH;
    const int ox0 = int(blockIdx.x) % tiles_w * TW;
    const T* t_img = static_cast<const T*>(a.t) + n * a.st.n;
    const Strides4 st = a.st;

    for (int i = tid; i < 9 * 64; i += kThreads) dws[i] = a.dw[i];
    if (tid < 64) {
        bds[tid] = a.bd[tid];
        b2s[tid] = a.b2[tid];
    }
    load_tile<T, T>(ts, 64, 64, t_img, st, a.H, a.W, oy0 - 1, ox0 - 1, TH + 2, TW + 2, L::HPX, 0, 64, nullptr, 0,
                    st.c == 1);
    __syncthreads();
    depthwise3x3_smem<T, T>(ts, 64, TW + 2, zs, M::LDZ, TW, P, dws, bds, [](int) { return true; });
    __syncthreads();  // the t halo is dead: the MLP buffers overwrite it
    M::run(zs, rbuf, scr, b1s, static_cast<const T*>(a.w1), a.b1, static_cast<const T*>(a.w2), a.hid);

    // residual: t again (an L2 hit: this block loaded the same tile moments ago)
    auto resid = [&](int p, int c) {
        const int gy = oy0 + p / TW, gx = ox0 + p % TW;
        return to_f(t_img[gy * st.h + gx * st.w + c * st.c]);
    };
    T* a_img = a.a != nullptr ? static_cast<T*>(a.a) + n * a.sa.n : nullptr;
    block_output<T, TH, TW>(reinterpret_cast<float*>(rbuf), M::LDO, b2s, resid, static_cast<T*>(a.y) + n * a.sy.n,
                            a.sy, a_img, a.sa, static_cast<const T*>(a.aw), a.ab, a.E, reinterpret_cast<float*>(zs),
                            a.H, a.W, oy0, ox0);
}

template <class T>
void launch(const ConvNeXtArgs& a, int device, cudaStream_t stream) {
    using L = CNLayout<T>;
    const int tiles_w = cdiv(a.W, L::TW);
    const int64_t tiles = int64_t(cdiv(a.H, L::TH)) * tiles_w;
    require(tiles < (int64_t(1) << 31), "convnext: map too large");
    auto kernel = convnext_kernel<T>;
    static std::atomic<uint64_t> ready{0};
    prepare_smem(kernel, L::bytes, device, ready, "convnext");
    BCRN_LAUNCH(kernel, dim3(unsigned(tiles), unsigned(a.N)), dim3(kThreads), L::bytes, stream, a, tiles_w);
    check_launch("convnext");
}

}  // namespace

void check_convnext_args(const ConvNeXtArgs& a, const char* op) {
    const std::string name(op);
    require(a.dtype == kF32 || a.dtype == kF16 || a.dtype == kBF16, name + ": dtype code must be 0, 1 or 2");
    require(a.N >= 0 && a.N <= 65535, name + ": batch must be in [0, 65535]");
    require(a.H >= 1 && a.W >= 1, name + ": sizes must be positive");
    require(a.hid >= 64 && a.hid % 64 == 0, name + ": hidden width must be a positive multiple of 64");
    require(a.t != nullptr && a.dw != nullptr && a.bd != nullptr && a.w1 != nullptr && a.b1 != nullptr &&
                a.w2 != nullptr && a.b2 != nullptr && a.y != nullptr,
            name + ": null pointer");
    if (a.a != nullptr)
        require(a.aw != nullptr && a.ab != nullptr && a.E >= 1 && a.E <= 16,
                name + ": the ESA epilogue needs A, a0 and 1 <= E <= 16");
}

void convnext(const ConvNeXtArgs& a, int device, void* stream) {
    check_convnext_args(a, "convnext");
    if (a.N == 0) return;
    DeviceGuard guard(device);
    cudaStream_t st = static_cast<cudaStream_t>(stream);
    switch (a.dtype) {
        case kF32: launch<float>(a, device, st); break;
        case kF16: launch<__half>(a, device, st); break;
        default: launch<__nv_bfloat16>(a, device, st); break;
    }
}

int64_t convnext_smem_bytes(int dtype) {
    return dtype == kF32 ? CNLayout<float>::bytes : dtype == kF16 ? CNLayout<__half>::bytes
                                                                   : CNLayout<__nv_bfloat16>::bytes;
}

}  // namespace bcrn
