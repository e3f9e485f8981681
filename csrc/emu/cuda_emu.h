// CPU emulation of the small CUDA subset bcrn_fast's kernels use.
//
// Built only for tests (-DBCRN_EMULATE, g++), never shipped: it lets the real
// kernel sources run on a machine without a GPU, the way TRITON_INTERPRET=1
// runs the Triton kernels. Every CUDA thread of a block is a cooperative fiber
// (ucontext) on ONE OS thread; a fiber runs until it reaches __syncthreads /
// __syncwarp or returns, so execution is deterministic and a missing barrier
// shows up as a read of data no fiber has written yet. Blocks run one after
// another. What it checks on top of the arithmetic:
//   - dynamic shared memory is filled with 0xFF (NaN for fp32/fp16/bf16) at the
//     start of each block: a read of smem nobody wrote turns into NaN;
//   - a canary after the dynamic shared memory catches overruns;
//   - all threads of a block must meet at the SAME __syncthreads (source line),
//     and a barrier nobody can pass is reported as a deadlock;
//   - ldmatrix / mma.sync are emulated lane by lane with the PTX register
//     layouts (ldmatrix rows must be 16-byte aligned and in shared memory).
// What it cannot check: the device memory model between blocks (blocks run in
// order), the tensor cores' internal summation order, timing, registers.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <setjmp.h>
#include <ucontext.h>
#include <vector_types.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <mutex>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

// ----------------------------------------------------------------- runtime API shims
// The CUDA headers above declare the runtime API (types from driver_types.h are
// used as they are); the few calls the launchers make are redirected to
// host-only stand-ins.
namespace emu {
inline const char* rt_error_string(cudaError_t) { return "emulated CUDA error"; }
inline cudaError_t rt_ok() { return cudaSuccess; }
inline cudaError_t rt_get_device(int* d) {
    *d = 0;
    return cudaSuccess;
}
inline cudaError_t rt_set_device(int) { return cudaSuccess; }
inline cudaError_t rt_device_attribute(int* v, cudaDeviceAttr attr, int) {
    // sm_86's 99 KB opt-in limit: the tightest of the targets, so the emulator flags a kernel that outgrows it
    *v = attr == cudaDevAttrMaxSharedMemoryPerBlockOptin ? 101376 : 0;
    return cudaSuccess;
}
template <class F>
inline cudaError_t rt_func_set_attribute(F, cudaFuncAttribute, int) {
    return cudaSuccess;
}
}  // namespace emu
#define cudaGetErrorString ::emu::rt_error_string
#define cudaPeekAtLastError ::emu::rt_ok
#define cudaGetLastError ::emu::rt_ok
#define cudaGetDevice ::emu::rt_get_device
#define cudaSetDevice ::emu::rt_set_device
#define cudaDeviceGetAttribute ::emu::rt_device_attribute
#define cudaFuncSetAttribute ::emu::rt_func_set_attribute

// ----------------------------------------------------------------- execution model
namespace emu {

enum State { kReady, kWaitBlock, kWaitWarp, kDone };

struct Fiber {
    ucontext_t ctx;  // first entry only
    jmp_buf jb;      // later switches: _setjmp/_longjmp (no signal-mask syscall, ~50x faster than swapcontext)
    bool started = false;
    std::vector<char> stack;
    State state = kReady;
    uint3 tid{0, 0, 0};
    int lin = 0;
};

struct Barrier {
    int arrived = 0;
    int line = -1;
};

// per-warp operand exchange of the emulated ldmatrix / mma.sync
struct WarpExchange {
    const void* ptr[32];
    float af[32][8];  // each lane's A registers, decoded (element 2·reg + half)
    float bf[32][4];  // each lane's B registers, decoded
};

inline constexpr size_t kStack = 256 * 1024;
inline constexpr size_t kCanary = 256;

inline Fiber* g_cur = nullptr;
inline uint3 g_blockIdx{0, 0, 0};
inline dim3 g_blockDim;
inline dim3 g_gridDim;
inline jmp_buf g_sched;
inline unsigned char* g_dyn_smem = nullptr;
inline size_t g_smem_size = 0;
inline std::vector<Fiber> g_fibers;
inline Barrier g_block_bar;
inline std::vector<Barrier> g_warp_bar;
inline std::vector<int> g_warp_live;
inline std::vector<WarpExchange> g_xchg;
inline int g_live = 0;
inline std::string g_error;
inline std::function<void()> g_body;
// Scheduling order (flip it to expose missing barriers):
//   0 round-robin from thread 0, 1 round-robin from the last thread (warps advance in lockstep);
//   2 always the lowest runnable thread, 3 always the highest (one warp races ahead of the others
//     until it blocks at __syncthreads: catches cross-warp races the lockstep orders hide).
inline int g_order = 0;
inline std::mutex g_mutex;

inline void fail(const std::string& msg) {
    if (g_error.empty()) g_error = msg;
}

inline void release_block() {
    for (auto& f : g_fibers)
        if (f.state == kWaitBlock) f.state = kReady;
    g_block_bar = Barrier{};
}

inline void release_warp(int w) {
    for (auto& f : g_fibers)
        if (f.state == kWaitWarp && f.lin / 32 == w) f.state = kReady;
    g_warp_bar[w] = Barrier{};
}

inline void yield_to_scheduler() {
    if (_setjmp(g_cur->jb) == 0) _longjmp(g_sched, 1);
}

inline void resume(Fiber& f) {
    g_cur = &f;
    if (_setjmp(g_sched) == 0) {
        if (!f.started) {
            f.started = true;
            setcontext(&f.ctx);
        }
        _longjmp(f.jb, 1);
    }
}

inline void sync_block(int line) {
    Barrier& b = g_block_bar;
    if (b.arrived > 0 && b.line != line)
        fail("threads of one block wait at different __syncthreads (lines " + std::to_string(b.line) + " and " +
             std::to_string(line) + ")");
    b.line = line;
    if (++b.arrived == g_live) {
        release_block();
        return;
    }
    g_cur->state = kWaitBlock;
    yield_to_scheduler();
}

inline void sync_warp(int line) {
    const int w = g_cur->lin / 32;
    Barrier& b = g_warp_bar[w];
    if (b.arrived > 0 && b.line != line)
        fail("lanes of one warp wait at different __syncwarp (lines " + std::to_string(b.line) + " and " +
             std::to_string(line) + ")");
    b.line = line;
    if (++b.arrived == g_warp_live[w]) {
        release_warp(w);
        return;
    }
    g_cur->state = kWaitWarp;
    yield_to_scheduler();
}

inline void fiber_main() {
    g_body();
    Fiber* f = g_cur;
    f->state = kDone;
    --g_live;
    const int w = f->lin / 32;
    --g_warp_live[w];
    // exited threads no longer count at a barrier
    if (g_block_bar.arrived > 0 && g_block_bar.arrived == g_live) release_block();
    if (g_warp_bar[w].arrived > 0 && g_warp_bar[w].arrived == g_warp_live[w]) release_warp(w);
    _longjmp(g_sched, 1);  // never returns into the finished context
}

inline void run_block(int nthreads) {
    g_live = nthreads;
    g_block_bar = Barrier{};
    const int nwarps = (nthreads + 31) / 32;
    g_warp_bar.assign(nwarps, Barrier{});
    g_warp_live.assign(nwarps, 0);
    g_xchg.assign(nwarps, WarpExchange{});
    for (int i = 0; i < nthreads; ++i) {
        Fiber& f = g_fibers[i];
        f.state = kReady;
        f.lin = i;
        f.tid = uint3{unsigned(i % g_blockDim.x), unsigned((i / g_blockDim.x) % g_blockDim.y),
                      unsigned(i / (g_blockDim.x * g_blockDim.y))};
        ++g_warp_live[i / 32];
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = f.stack.data();
        f.ctx.uc_stack.ss_size = f.stack.size();
        f.ctx.uc_link = nullptr;
        f.started = false;
        makecontext(&f.ctx, fiber_main, 0);
    }
    for (;;) {
        bool ran = false;
        for (int k = 0; k < nthreads; ++k) {
            const int i = g_order % 2 == 0 ? k : nthreads - 1 - k;
            Fiber& f = g_fibers[i];
            if (f.state != kReady) continue;
            resume(f);
            ran = true;
            if (g_order >= 2) break;  // rescan from the preferred end
        }
        if (g_live == 0) break;
        if (!ran) {
            fail("deadlock: threads wait at a barrier the other threads never reach");
            break;
        }
    }
    g_cur = nullptr;
}

template <class... KArgs, class... Args>
void launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, Args&&... args) {
    std::lock_guard<std::mutex> lock(g_mutex);
    const int nthreads = int(block.x * block.y * block.z);
    if (nthreads < 1 || nthreads > 1024) throw std::runtime_error("emu: invalid block size");
    if (smem > 227 * 1024) throw std::runtime_error("emu: too much dynamic shared memory");
    std::tuple<KArgs...> targs(std::forward<Args>(args)...);
    g_body = [&] { std::apply(kernel, targs); };
    g_error.clear();
    g_blockDim = block;
    g_gridDim = grid;
    if (int(g_fibers.size()) < nthreads) {
        g_fibers.resize(nthreads);
        for (auto& f : g_fibers)
            if (f.stack.size() != kStack) f.stack.resize(kStack);
    }
    std::vector<unsigned char> buf(smem + kCanary + 128);
    unsigned char* base = buf.data() + (128 - reinterpret_cast<uintptr_t>(buf.data()) % 128) % 128;
    g_dyn_smem = base;
    g_smem_size = smem;
    for (unsigned z = 0; z < grid.z && g_error.empty(); ++z)
        for (unsigned y = 0; y < grid.y && g_error.empty(); ++y)
            for (unsigned x = 0; x < grid.x && g_error.empty(); ++x) {
                g_blockIdx = uint3{x, y, z};
                std::memset(base, 0xFF, smem);
                std::memset(base + smem, 0xA5, kCanary);
                run_block(nthreads);
                for (size_t i = 0; i < kCanary; ++i)
                    if (base[smem + i] != 0xA5) {
                        fail("shared-memory overrun past the dynamic allocation of " + std::to_string(smem) +
                             " bytes");
                        break;
                    }
            }
    g_dyn_smem = nullptr;
    g_body = nullptr;
    if (!g_error.empty()) throw std::runtime_error("emu: " + g_error);
}

inline void set_order(int order) { g_order = order; }

}  // namespace emu

// ----------------------------------------------------------------- device-code keywords
#undef __global__
#undef __device__
#undef __host__
#undef __forceinline__
#undef __align__
#undef __launch_bounds__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define threadIdx (::emu::g_cur->tid)
#define blockIdx (::emu::g_blockIdx)
#define blockDim (::emu::g_blockDim)
#define gridDim (::emu::g_gridDim)
#define __syncthreads() ::emu::sync_block(__LINE__)
#define __syncwarp(...) ::emu::sync_warp(__LINE__)
#define __threadfence() std::atomic_thread_fence(std::memory_order_seq_cst)
#define BCRN_DYNAMIC_SMEM(name) unsigned char* name = ::emu::g_dyn_smem
#define BCRN_LAUNCH(kernel, grid, block, smem, stream, ...) ::emu::launch(kernel, grid, block, smem, __VA_ARGS__)

inline unsigned atomicAdd(unsigned* p, unsigned v) {
    const unsigned old = *p;
    *p = old + v;
    return old;
}
template <class T>
inline T __ldcg(const T* p) {
    return *p;
}

// ----------------------------------------------------------------- tensor-core instructions (lane level)
// ldmatrix.x4(.trans) and mma.sync.m16n8k16 with the per-lane register layouts
// of the PTX ISA: every lane publishes its operands in a per-warp exchange
// area, the warp meets at a barrier, and each lane assembles exactly the
// registers the hardware would hand it. This checks the callers' addressing.
namespace emu {


inline int lane_id() { return g_cur->lin % 32; }

inline void check_smem(const void* p, size_t bytes, const char* what) {
    const auto* c = static_cast<const unsigned char*>(p);
    if (c < g_dyn_smem || c + bytes > g_dyn_smem + g_smem_size)
        fail(std::string(what) + ": address outside the block's shared memory");
}

inline void ldmatrix_x4(uint32_t (&r)[4], const void* row_ptr, bool trans) {
    if (reinterpret_cast<uintptr_t>(row_ptr) % 16 != 0) fail("ldmatrix: row address not 16-byte aligned");
    check_smem(row_ptr, 16, "ldmatrix");
    WarpExchange& x = g_xchg[g_cur->lin / 32];
    const int l = lane_id(), g = l / 4, q = l % 4;
    x.ptr[l] = row_ptr;
    sync_warp(__LINE__);
    for (int m = 0; m < 4; ++m) {  // matrix m: its 8 rows are addressed by lanes 8m .. 8m + 7
        uint16_t lo, hi;
        if (!trans) {  // lane gets row g, columns 2q and 2q + 1
            const auto* row = static_cast<const uint16_t*>(x.ptr[8 * m + g]);
            lo = row[2 * q];
            hi = row[2 * q + 1];
        } else {  // transposed: rows 2q and 2q + 1 of column g
            lo = static_cast<const uint16_t*>(x.ptr[8 * m + 2 * q])[g];
            hi = static_cast<const uint16_t*>(x.ptr[8 * m + 2 * q + 1])[g];
        }
        r[m] = uint32_t(lo) | (uint32_t(hi) << 16);
    }
    sync_warp(__LINE__);
}

template <class T>
inline float bits_to_float(uint16_t bits);
template <>
inline float bits_to_float<__half>(uint16_t bits) {
    __half_raw raw;
    raw.x = bits;
    return __half2float(__half(raw));
}
template <>
inline float bits_to_float<__nv_bfloat16>(uint16_t bits) {
    __nv_bfloat16_raw raw;
    raw.x = bits;
    return __bfloat162float(__nv_bfloat16(raw));
}

// d[0..3] += A(16x16) · B(16x8) for this lane's accumulator slots, A/B spread over the warp's registers.
template <class T>
inline void mma_m16n8k16(float* d, const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    WarpExchange& x = g_xchg[g_cur->lin / 32];
    const int l = lane_id(), g = l / 4, q = l % 4;
    for (int i = 0; i < 8; ++i) x.af[l][i] = bits_to_float<T>(uint16_t(i % 2 ? a[i / 2] >> 16 : a[i / 2] & 0xFFFF));
    for (int i = 0; i < 4; ++i) x.bf[l][i] = bits_to_float<T>(uint16_t(i % 2 ? b[i / 2] >> 16 : b[i / 2] & 0xFFFF));
    sync_warp(__LINE__);
    // A[row][k] is held by lane (row % 8)·4 + (k % 8)/2 in register (row ≥ 8) + 2·(k ≥ 8), half k % 2;
    // B[k][n] by lane n·4 + (k % 8)/2 in register (k ≥ 8), half k % 2.
    const int rows[4] = {g, g, g + 8, g + 8};
    const int cols[4] = {2 * q, 2 * q + 1, 2 * q, 2 * q + 1};
    float out[4];
    for (int i = 0; i < 4; ++i) {
        const int row = rows[i], n = cols[i];
        float s = d[i];
        for (int k = 0; k < 16; ++k) {
            const float av = x.af[(row % 8) * 4 + (k % 8) / 2][((row >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0)) * 2 + k % 2];
            const float bv = x.bf[n * 4 + (k % 8) / 2][(k >= 8 ? 1 : 0) * 2 + k % 2];
            s += av * bv;
        }
        out[i] = s;
    }
    sync_warp(__LINE__);
    for (int i = 0; i < 4; ++i) d[i] = out[i];
}

}  // namespace emu

inline uint32_t __cvta_generic_to_shared(const void* p) {
    return uint32_t(static_cast<const unsigned char*>(p) - ::emu::g_dyn_smem);
}
