// cca.cu - CCA statistics + squeeze MLP + sigmoid in one launch, deterministic.
//
//   mean[n, c] = (1/HW) Σ_p x[n, c, p]        std[n, c] = sqrt((1/HW) Σ_p (x[n, c, p] − mean)²)   (population, no eps)
//   s[n, :]    = σ(W2ᵀ · relu(W1ᵀ · (mean + std)[n, :] + b1) + b2)                             W1 [C, R], W2 [R, C]
//
// Tile: grid = (B, N); block b of image n owns the contiguous pixel range
// [b·⌈HW/B⌉, (b+1)·⌈HW/B⌉) × all C ≤ 64 channels. Each thread runs Welford
// (count, mean, M2) over a fixed strided subset of the range (channel-fast
// lanes for channels-last input, pixel-fast lanes otherwise, so loads coalesce
// either way); the block merges its lanes with Chan's formula in lane order
// and writes one partial per channel to the workspace. The last block of
// image n to finish (atomic ticket after __threadfence) merges the B partials
// in block order 0..B−1 - never in arrival order - so s is bit-identical run
// to run, computes mean + std, the 64 -> R -> 64 squeeze MLP and the sigmoid,
// writes s[n, :] and resets the ticket to 0 for the next launch. B depends on
// HW only (cca_blocks), so the result does not depend on the GPU either.
// Welford/Chan, not Σx and Σx², which cancels catastrophically when |mean| ≫ std;
// a constant channel gives M2 = 0 exactly, std = 0.
#include "common.cuh"

namespace bcrn {
namespace {

constexpr int kMaxC = 64;
constexpr int kMaxLanes = 32;
constexpr int64_t kCCASmem = (3 * kMaxC * kMaxLanes + kMaxC + kMaxC) * 4 + 16;

// (na, ma, Ma) <- (na, ma, Ma) ∪ (nb, mb, Mb)   (Chan et al.; exact for nb = 0 or na = 0)
__device__ __forceinline__ void chan_merge(float& na, float& ma, float& Ma, float nb, float mb, float Mb) {
    if (nb == 0.0f) return;
    const float nt = na + nb;
    const float d = mb - ma;
    const float fb = nb / nt;
    ma = fmaf(d, fb, ma);
    Ma = Ma + Mb + d * d * na * fb;
    na = nt;
}

template <class T>
__global__ void __launch_bounds__(kThreads, kMinBlocks) cca_kernel(CCAArgs a) {
    BCRN_DYNAMIC_SMEM(smem);
    float* pc = reinterpret_cast<float*>(smem);  // [kMaxC][kMaxLanes] lane partials: count
    float* pm = pc + kMaxC * kMaxLanes;          //                                   mean
    float* pM = pm + kMaxC * kMaxLanes;          //                                   M2
    float* ys = pM + kMaxC * kMaxLanes;          // [kMaxC] mean + std
    float* hs = ys + kMaxC;                      // [kMaxC] squeeze hidden (R ≤ 64)
    unsigned* last = reinterpret_cast<unsigned*>(hs + kMaxC);

    const int tid = threadIdx.x;
    const int n = blockIdx.y, b = blockIdx.x;
    const int C = a.C, W = a.W;
    const int hw = a.H * a.W;
    const int chunk = cdiv(hw, a.blocks);
    const int p_begin = b * chunk;
    const int p_end = p_begin + chunk < hw ? p_begin + chunk : hw;
    const T* x = static_cast<const T*>(a.x) + n * a.sx.n;
    const Strides4 sx = a.sx;

    int lanes;
    if (sx.c == 1) {
        // channel-fast: thread = (channel tid % 64, lane tid / 64), pixels p_begin + lane + 4i
        lanes = kThreads / kMaxC;
        const int c = tid % kMaxC, lane = tid / kMaxC;
        float cnt = 0.0f, mean = 0.0f, m2 = 0.0f;
        if (c < C && p_begin + lane < p_end) {
            int p = p_begin + lane;
            int h = p / W, w = p % W;
            for (; p < p_end; p += lanes) {
                const float v = to_f(x[h * sx.h + w * sx.w + c]);
                cnt += 1.0f;
                const float d = v - mean;
                mean += d / cnt;
                m2 = fmaf(d, v - mean, m2);
                w += lanes;
                while (w >= W) {
                    w -= W;
                    ++h;
                }
            }
        }
        pc[c * kMaxLanes + lane] = cnt;
        pm[c * kMaxLanes + lane] = mean;
        pM[c * kMaxLanes + lane] = m2;
    } else {
        // pixel-fast: thread = (pixel lane tid % 32, channels warp + 8j), pixels p_begin + lane + 32i
        lanes = kMaxLanes;
        constexpr int CPT = kMaxC / kWarps;
        const int lane = tid % 32, warp = tid / 32;
        float cnt = 0.0f, mean[CPT], m2[CPT];
#pragma unroll
        for (int j = 0; j < CPT; ++j) mean[j] = m2[j] = 0.0f;
        if (p_begin + lane < p_end) {
            int p = p_begin + lane;
            int h = p / W, w = p % W;
            for (; p < p_end; p += lanes) {
                cnt += 1.0f;
                const float inv = 1.0f / cnt;
                const T* px = x + h * sx.h + w * sx.w;
#pragma unroll
                for (int j = 0; j < CPT; ++j) {
                    const int c = warp + kWarps * j;
                    if (c < C) {
                        const float v = to_f(px[c * sx.c]);
                        const float d = v - mean[j];
                        mean[j] = fmaf(d, inv, mean[j]);
                        m2[j] = fmaf(d, v - mean[j], m2[j]);
                    }
                }
                w += lanes;
                while (w >= W) {
                    w -= W;
                    ++h;
                }
            }
        }
#pragma unroll
        for (int j = 0; j < CPT; ++j) {
            const int c = warp + kWarps * j;
            pc[c * kMaxLanes + lane] = cnt;
            pm[c * kMaxLanes + lane] = mean[j];
            pM[c * kMaxLanes + lane] = m2[j];
        }
    }
    __syncthreads();

    // block partial: lanes merged in lane order, written to the workspace
    if (tid < C) {
        float na = 0.0f, ma = 0.0f, Ma = 0.0f;
        for (int k = 0; k < lanes; ++k)
            chan_merge(na, ma, Ma, pc[tid * kMaxLanes + k], pm[tid * kMaxLanes + k], pM[tid * kMaxLanes + k]);
        float* dst = a.partials + ((int64_t(n) * a.blocks + b) * C + tid) * 3;
        dst[0] = na;
        dst[1] = ma;
        dst[2] = Ma;
        __threadfence();  // make this block's partials visible device-wide before the ticket
    }
    __syncthreads();
    if (tid == 0) {
        const unsigned ticket = atomicAdd(a.counters + n, 1u);
        *last = ticket == unsigned(a.blocks - 1) ? 1u : 0u;
    }
    __syncthreads();
    if (*last == 0u) return;  // uniform over the block
    __threadfence();

    // the last block of image n: merge the B partials in block order (not arrival order)
    if (tid < C) {
        float na = 0.0f, ma = 0.0f, Ma = 0.0f;
        const float* src = a.partials + int64_t(n) * a.blocks * C * 3;
        for (int k = 0; k < a.blocks; ++k) {
            const float* q = src + (int64_t(k) * C + tid) * 3;
            chan_merge(na, ma, Ma, __ldcg(q), __ldcg(q + 1), __ldcg(q + 2));
        }
        const float var = na > 0.0f ? fmaxf(Ma / na, 0.0f) : 0.0f;
        ys[tid] = ma + sqrtf(var);
    }
    __syncthreads();
    if (tid < a.R) {
        float v = a.b1[tid];
        for (int c = 0; c < C; ++c) v = fmaf(a.w1[c * a.R + tid], ys[c], v);
        hs[tid] = v > 0.0f ? v : 0.0f;
    }
    __syncthreads();
    if (tid < C) {
        float v = a.b2[tid];
        for (int r = 0; r < a.R; ++r) v = fmaf(a.w2[r * C + tid], hs[r], v);
        a.s[n * a.ssn + tid * a.ssc] = sigmoid_f(v);
    }
    if (tid == 0) a.counters[n] = 0u;  // ready for the next launch (stream order)
}

template <class T>
void launch(const CCAArgs& a, int device, cudaStream_t stream) {
    auto kernel = cca_kernel<T>;
    static std::atomic<uint64_t> ready{0};
    prepare_smem(kernel, kCCASmem, device, ready, "cca_scale");
    BCRN_LAUNCH(kernel, dim3(unsigned(a.blocks), unsigned(a.N)), dim3(kThreads), kCCASmem, stream, a);
    check_launch("cca_scale");
}

}  // namespace

int cca_blocks(int64_t hw) {
    const int64_t b = (hw + 511) / 512;  // ~512 pixels per block
    return int(b < 1 ? 1 : b > 128 ? 128 : b);
}

void cca_scale(const CCAArgs& a, int device, void* stream) {
    require(a.dtype == kF32 || a.dtype == kF16 || a.dtype == kBF16, "cca_scale: dtype code must be 0, 1 or 2");
    require(a.C >= 1 && a.C <= kMaxC, "cca_scale: channels must be in [1, 64]");
    require(a.R >= 1 && a.R <= kMaxC, "cca_scale: squeeze width must be in [1, 64]");
    require(a.N >= 0 && a.N <= 65535, "cca_scale: batch must be in [0, 65535]");
    require(a.H >= 1 && a.W >= 1 && int64_t(a.H) * a.W < (int64_t(1) << 24),
            "cca_scale: H·W must be in [1, 2^24) (fp32 pixel counts stay exact)");
    require(a.blocks == cca_blocks(int64_t(a.H) * a.W), "cca_scale: workspace blocks must equal cca_blocks(H·W)");
    require(a.x != nullptr && a.w1 != nullptr && a.b1 != nullptr && a.w2 != nullptr && a.b2 != nullptr &&
                a.s != nullptr && a.partials != nullptr && a.counters != nullptr,
            "cca_scale: null pointer");
    if (a.N == 0) return;
    DeviceGuard guard(device);
    cudaStream_t st = static_cast<cudaStream_t>(stream);
    switch (a.dtype) {
        case kF32: launch<float>(a, device, st); break;
        case kF16: launch<__half>(a, device, st); break;
        default: launch<__nv_bfloat16>(a, device, st); break;
    }
}

int64_t cca_smem_bytes(int) { return kCCASmem; }

}  // namespace bcrn
