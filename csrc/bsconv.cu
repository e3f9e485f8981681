// bsconv.cu - BSConvU (pointwise 1x1, then depthwise KxK) in one launch.
//
//   z[n, o, p] = Σ_i pw_t[i, o] · s[n, i] · x[n, i, p]                      (0 outside the image)
//   y[n, o, q] = act(b[o] + Σ_{kh,kw} dw[kh·K + kw, o] · z[n, o, q·S − pad + (kh, kw)]) + res[n, o, q]
//
// with an optional pixel-shuffle store (channel o = c·r² + i·r + j of output pixel
// q goes to y[n, c, r·qh + i, r·qw + j]; res is given in that layout).
//
// Tile: a block owns TH × TW output pixels of ONE image × 64 output channels
// (grid = (tiles, ⌈Cout/64⌉, N)). It loads the ((TH−1)·S + K) × ((TW−1)·S + K)
// halo of x once (input channels 32 at a time, scale on load, rounded to the
// compute dtype), computes z for every halo pixel once (HaloGemm: tensor cores for
// fp16/bf16, fp32 FMA for fp32) into shared memory as fp32, and runs the
// depthwise taps from there. x is read once (+ halo), y written once; the
// pointwise work is (halo / tile) ≈ 1.5x the minimum, the price of one pass.
// The host picks TH × TW (halo ≤ 144 pixels): 6 × 16 for 3x3 stride 1,
// 9 × 16 for 1x1, 7 × 4 for 3x3 stride 2.
#include "tile_gemm.cuh"

namespace bcrn {
namespace {

constexpr int kBSRows = 144;  // halo pixels per block (9 MMA row tiles)

template <class T>
struct BSLayout {
    using G = HaloGemm<T, kBSRows>;
    static constexpr int64_t vec_off = G::bytes;                // dws [K·K][64], bs [64] (fp32)
    static constexpr int64_t bytes = vec_off + (9 * 64 + 64) * 4;
};

template <class T, int K>
__global__ void __launch_bounds__(kThreads, kMinBlocks) bsconv_kernel(BSConvArgs a, int TH, int TW, int tiles_w) {
    BCRN_DYNAMIC_SMEM(smem);
    using L = BSLayout<T>;
    using G = typename L::G;
    const float* zs = reinterpret_cast<const float*>(smem);
    float* dws = reinterpret_cast<float*>(smem + L::vec_off);
    float* bs = dws + K * K * 64;

    const int tid = threadIdx.x;
    const int n = blockIdx.z;
    const int co0 = blockIdx.y * 64;
    const int oy0 = int(blockIdx.x) / tiles_w * TH;
    const int ox0 = int(blockIdx.x) % tiles_w * TW;
    const int S = a.stride;
    const int hh = (TH - 1) * S + K, ww = (TW - 1) * S + K;

    for (int i = tid; i < K * K * 64; i += kThreads) {
        const int tap = i / 64, c = i % 64;
        dws[i] = co0 + c < a.Cout ? a.dw[int64_t(tap) * a.Cout + co0 + c] : 0.0f;
    }
    for (int i = tid; i < 64; i += kThreads) bs[i] = co0 + i < a.Cout ? a.bias[co0 + i] : 0.0f;

    const T* x_img = static_cast<const T*>(a.x) + n * a.sx.n;
    const float* scale = a.scale != nullptr ? a.scale + n * a.ssn : nullptr;
    G::run(smem, x_img, a.sx, a.H, a.W, oy0 * S - a.pad, ox0 * S - a.pad, hh, ww, scale, a.ssc,
           static_cast<const T*>(a.pw), a.Cin, a.Cout, co0);

    // depthwise taps from the fp32 pointwise tile, activation, residual, (shuffled) store
    const int r = a.shuffle > 1 ? a.shuffle : 1;
    const bool y_cfast = a.sy.c == 1 && r == 1;
    const int TP = TH * TW;
    T* y_img = static_cast<T*>(a.y) + n * a.sy.n;
    const T* res_img = a.res != nullptr ? static_cast<const T*>(a.res) + n * a.sr.n : nullptr;
    for (int i = tid; i < TP * 64; i += kThreads) {
        int c, p;
        if (y_cfast) {
            c = i % 64;
            p = i / 64;
        } else {
            p = i % TP;
            c = i / TP;
        }
        const int co = co0 + c;
        const int ly = p / TW, lx = p % TW;
        const int oy = oy0 + ly, ox = ox0 + lx;
        if (co >= a.Cout || oy >= a.Ho || ox >= a.Wo) continue;
        float v = 0.0f;
#pragma unroll
        for (int kh = 0; kh < K; ++kh)
#pragma unroll
            for (int kw = 0; kw < K; ++kw)
                v = fmaf(dws[(kh * K + kw) * 64 + c], zs[((ly * S + kh) * ww + lx * S + kw) * G::LDZ + c], v);
        v = activate(v + bs[c], a.act);
        int cs = co, yy = oy, xx = ox;
        if (r > 1) {
            cs = co / (r * r);
            yy = oy * r + (co / r) % r;
            xx = ox * r + co % r;
        }
        if (res_img != nullptr) v += to_f(res_img[cs * a.sr.c + yy * a.sr.h + xx * a.sr.w]);
        y_img[cs * a.sy.c + yy * a.sy.h + xx * a.sy.w] = from_f<T>(v);
    }
}

// Largest output tile whose halo fits kBSRows pixels, preferring wide tiles (coalesced rows).
void choose_tile(int K, int S, int Ho, int Wo, int& TH, int& TW) {
    int best = -1;
    TH = TW = 1;
    for (int tw : {16, 8, 4, 2, 1}) {
        const int ww = (tw - 1) * S + K;
        if (K * ww > kBSRows) continue;
        int th = 1;
        while ((th * S + K) * ww <= kBSRows) ++th;  // (th + 1) rows still fit
        const int useful = (th < Ho ? th : Ho) * (tw < Wo ? tw : Wo);
        if (useful > best) {
            best = useful;
            TH = th;
            TW = tw;
        }
    }
    if (TH > Ho) TH = Ho;
}

template <class T, int K>
void launch(const BSConvArgs& a, int device, cudaStream_t stream) {
    int TH, TW;
    choose_tile(K, a.stride, a.Ho, a.Wo, TH, TW);
    const int tiles_w = cdiv(a.Wo, TW);
    const int64_t tiles = int64_t(cdiv(a.Ho, TH)) * tiles_w;
    require(tiles < (int64_t(1) << 31), "bsconv: output too large");
    auto kernel = bsconv_kernel<T, K>;
    static std::atomic<uint64_t> ready{0};
    prepare_smem(kernel, BSLayout<T>::bytes, device, ready, "bsconv");
    const dim3 grid(unsigned(tiles), unsigned(cdiv(a.Cout, 64)), unsigned(a.N));
    BCRN_LAUNCH(kernel, grid, dim3(kThreads), BSLayout<T>::bytes, stream, a, TH, TW, tiles_w);
    check_launch("bsconv");
}

}  // namespace

void bsconv(const BSConvArgs& a, int device, void* stream) {
    require(a.dtype == kF32 || a.dtype == kF16 || a.dtype == kBF16, "bsconv: dtype code must be 0, 1 or 2");
    require(a.ksize == 1 || a.ksize == 3, "bsconv: ksize must be 1 or 3");
    require(a.stride >= 1 && a.stride <= 4, "bsconv: stride must be in 1..4");
    require(a.pad >= 0 && a.pad < a.ksize, "bsconv: padding must be in [0, ksize)");
    require(a.act == kActNone || a.act == kActRelu || a.act == kActGelu, "bsconv: act must be 0, 1 or 2");
    require(a.N >= 0 && a.N <= 65535, "bsconv: batch must be in [0, 65535]");
    require(a.Cin >= 1 && a.Cout >= 1 && a.H >= 1 && a.W >= 1, "bsconv: sizes must be positive");
    require(a.Ho == (a.H + 2 * a.pad - a.ksize) / a.stride + 1 && a.Wo == (a.W + 2 * a.pad - a.ksize) / a.stride + 1,
            "bsconv: Ho/Wo do not match H, W, ksize, stride, padding");
    require(a.Ho >= 1 && a.Wo >= 1, "bsconv: empty output");
    const int r = a.shuffle > 1 ? a.shuffle : 1;
    require(a.shuffle >= 0 && a.Cout % (r * r) == 0, "bsconv: Cout must be divisible by shuffle²");
    require(a.x != nullptr && a.pw != nullptr && a.dw != nullptr && a.bias != nullptr && a.y != nullptr,
            "bsconv: null pointer");
    if (a.N == 0) return;
    DeviceGuard guard(device);
    cudaStream_t st = static_cast<cudaStream_t>(stream);
    const bool k3 = a.ksize == 3;
    switch (a.dtype) {
        case kF32: k3 ? launch<float, 3>(a, device, st) : launch<float, 1>(a, device, st); break;
        case kF16: k3 ? launch<__half, 3>(a, device, st) : launch<__half, 1>(a, device, st); break;
        default: k3 ? launch<__nv_bfloat16, 3>(a, device, st) : launch<__nv_bfloat16, 1>(a, device, st); break;
    }
}

int64_t bsconv_smem_bytes(int dtype) {
    return dtype == kF32 ? BSLayout<float>::bytes : dtype == kF16 ? BSLayout<__half>::bytes
                                                                   : BSLayout<__nv_bfloat16>::bytes;
}

}  // namespace bcrn
