// bcb_front.cu - the front half of a BCB in ONE kernel: BSConv(64 -> 64, 3x3) then the
// ConvNeXt inverse bottleneck, t1 never written to memory.
//
//   t1[p, :] = b0 + Σ_tap dw0[tap] ⊙ (pw_tᵀ · (s ⊙ x)[p + tap])          (BSConvU, 0 outside the image)
//   z[p, :]  = b_d + Σ_tap dw[tap] ⊙ t1[p + tap]                        (t1 zero-padded)
//   y[p, :]  = t1[p, :] + Σ_chunks GELU(z · W1[:, chunk] + b1[chunk]) · W2[chunk, :] + b2
//   a[p, :]  = y[p, :] · A + a0                                         (optional ESA pre-map)
//
// Two stacked 3x3 convs need a 2-pixel halo: a block owns an 8 × 8 tile of ONE
// image × 64 channels (grid = (tiles, N)), loads the 12 × 12 halo of x once
// (channels 32 at a time, CCA scale on load), computes the pointwise GEMM for
// all 144 halo pixels (tensor cores for fp16/bf16, fp32 FMA for fp32) into fp32 shared
// memory, the BSConv depthwise for the 10 × 10 ring-1 region into t1 (rounded
// to the storage dtype, exactly what the two-kernel path would store and read
// back; zero outside the image, which is the ConvNeXt's padding), then the
// ConvNeXt on the 8 × 8 core. Per pixel: 64 channels read, 64 (+ E) written;
// the halo recomputation costs 144/64 ≈ 2.3x on the 4K-MAC BSConv GEMM (the
// 33K-MAC bottleneck is not recomputed). This is the fusion Triton cannot
// express: a tile-wide intermediate (t1 with its halo) shared between threads.
#include "tile_gemm.cuh"

namespace bcrn {

void check_convnext_args(const ConvNeXtArgs& a, const char* op);  // convnext.cu

namespace {

template <class T>
struct BFLayout {
    static constexpr int TH = 8, TW = 8;
    static constexpr int HC = kTensorCores<T> ? 64 : 32;
    static constexpr int P = TH * TW, H1 = (TH + 2) * (TW + 2), H2 = (TH + 4) * (TW + 4);
    using G = HaloGemm<T, round_up(H2, 16)>;
    using M = Mlp<T, P, HC>;
    // region A: the pointwise GEMM (x chunks, then z0 fp32); later z (compute dtype) + the MLP buffers
    static constexpr int64_t zs_off = 0;
    static constexpr int64_t w_off = M::zs_bytes;
    static constexpr int64_t a_bytes = align128(cmax(G::bytes, w_off + M::bytes));
    static constexpr int64_t t1_off = a_bytes;                                      // t1 [H1][64] storage dtype
    static constexpr int64_t scr_off = t1_off + align128(int64_t(H1) * 64 * sizeof(T));
    static constexpr int64_t vec_off = scr_off + M::scr_bytes;  // dw0 [9][64], b0, dw [9][64], bd, b2, b1 chunk
    static constexpr int kVec = 2 * (9 * 64 + 64) + 64 + HC;
    static constexpr int64_t bytes = vec_off + kVec * 4;
    static_assert(M::zs_bytes >= (64 * 16 + 16) * 4, "the ESA weights reuse the z buffer");
};

template <class T>
__global__ void __launch_bounds__(kThreads, kMinBlocks) bcb_front_kernel(BCBFrontArgs f, int tiles_w) {
    BCRN_DYNAMIC_SMEM(smem);
    using L = BFLayout<T>;
    using G = typename L::G;
    using M = typename L::M;
    constexpr int TH = L::TH, TW = L::TW, P = L::P;
    const ConvNeXtArgs& a = f.cn;
    const float* z0s = reinterpret_cast<const float*>(smem);
    T* zs = reinterpret_cast<T*>(smem + L::zs_off);
    unsigned char* wbuf = smem + L::w_off;
    T* t1s = reinterpret_cast<T*>(smem + L::t1_off);
    float* scr = reinterpret_cast<float*>(smem + L::scr_off);
    float* dw0s = reinterpret_cast<float*>(smem + L::vec_off);
    float* b0s = dw0s + 9 * 64;
    float* dws = b0s + 64;
    float* bds = dws + 9 * 64;
    float* b2s = bds + 64;
    float* b1s = b2s + 64;

    const int tid = threadIdx.x;
    const int n = blockIdx.y;
    const int oy0 = int(blockIdx.x) / tiles_w * TH;
    const int ox0 = int(blockIdx.x) % tiles_w * TW;
    const int H = a.H, W = a.W;

    for (int i = tid; i < 9 * 64; i += kThreads) {
        dw0s[i] = f.dw0[i];
        dws[i] = a.dw[i];
    }
    if (tid < 64) {
        b0s[tid] = f.b0[tid];
        bds[tid] = a.bd[tid];
        b2s[tid] = a.b2[tid];
    }

    // 1. pointwise GEMM over the 12 x 12 halo of x -> z0 (fp32, region A)
    const T* x_img = static_cast<const T*>(a.t) + n * a.st.n;
    const float* scale = f.scale != nullptr ? f.scale + n * f.ssn : nullptr;
    G::run(smem, x_img, a.st, H, W, oy0 - 2, ox0 - 2, TH + 4, TW + 4, scale, f.ssc, static_cast<const T*>(f.pw), 64,
           64, 0);

    // 2. BSConv depthwise on the 10 x 10 ring-1 region -> t1 (storage dtype; zero outside the image)
    depthwise3x3_smem<float, T>(z0s, G::LDZ, TW + 4, t1s, 64, TW + 2, L::H1, dw0s, b0s, [&](int p) {
        const int gy = oy0 - 1 + p / (TW + 2), gx = ox0 - 1 + p % (TW + 2);
        return gy >= 0 && gy < H && gx >= 0 && gx < W;
    });
    __syncthreads();  // z0 is dead: z overwrites region A

    // 3. ConvNeXt depthwise on the 8 x 8 core -> z (compute dtype)
    depthwise3x3_smem<T, T>(t1s, 64, TW + 2, zs, M::LDZ, TW, P, dws, bds, [](int) { return true; });
    __syncthreads();

    // 4. inverse bottleneck, 5. epilogue (residual = t1 from shared memory)
    M::run(zs, wbuf, scr, b1s, static_cast<const T*>(a.w1), a.b1, static_cast<const T*>(a.w2), a.hid);
    auto resid = [&](int p, int c) { return to_f(t1s[((p / TW + 1) * (TW + 2) + p % TW + 1) * 64 + c]); };
    T* a_img = a.a != nullptr ? static_cast<T*>(a.a) + n * a.sa.n : nullptr;
    block_output<T, TH, TW>(reinterpret_cast<float*>(wbuf), M::LDO, b2s, resid, static_cast<T*>(a.y) + n * a.sy.n,
                            a.sy, a_img, a.sa, static_cast<const T*>(a.aw), a.ab, a.E, reinterpret_cast<float*>(zs), H,
                            W, oy0, ox0);
}

template <class T>
void launch(const BCBFrontArgs& f, int device, cudaStream_t stream) {
    using L = BFLayout<T>;
    const int tiles_w = cdiv(f.cn.W, L::TW);
    const int64_t tiles = int64_t(cdiv(f.cn.H, L::TH)) * tiles_w;
    require(tiles < (int64_t(1) << 31), "bcb_front: map too large");
    auto kernel = bcb_front_kernel<T>;
    static std::atomic<uint64_t> ready{0};
    prepare_smem(kernel, L::bytes, device, ready, "bcb_front");
    BCRN_LAUNCH(kernel, dim3(unsigned(tiles), unsigned(f.cn.N)), dim3(kThreads), L::bytes, stream, f, tiles_w);
    check_launch("bcb_front");
}

}  // namespace

void bcb_front(const BCBFrontArgs& f, int device, void* stream) {
    check_convnext_args(f.cn, "bcb_front");
    require(f.pw != nullptr && f.dw0 != nullptr && f.b0 != nullptr, "bcb_front: null BSConv weight pointer");
    if (f.cn.N == 0) return;
    DeviceGuard guard(device);
    cudaStream_t st = static_cast<cudaStream_t>(stream);
    switch (f.cn.dtype) {
        case kF32: launch<float>(f, device, st); break;
        case kF16: launch<__half>(f, device, st); break;
        default: launch<__nv_bfloat16>(f, device, st); break;
    }
}

int64_t bcb_front_smem_bytes(int dtype) {
    return dtype == kF32 ? BFLayout<float>::bytes : dtype == kF16 ? BFLayout<__half>::bytes
                                                                   : BFLayout<__nv_bfloat16>::bytes;
}

}  // namespace bcrn
