// pybind11 module bcrn_fast._C: the CUDA kernels behind plain integers.
//
// Every entry point takes device pointers as Python ints (tensor.data_ptr()),
// sizes, element strides, a dtype code (0 fp32, 1 fp16, 2 bf16), the device
// index and the cudaStream_t handle (torch.cuda.current_stream().cuda_stream).
// Nothing here includes or links libtorch, so one build serves every torch
// version; the CUDA runtime is linked statically, so the module needs only the
// driver (libcuda) at launch time and nothing CUDA-related at import time.
// Checks of shapes/dtypes/devices live in bcrn_fast/ops/cuda_ext.py; the
// launchers re-check what would make a kernel misbehave and raise ValueError
// (bad arguments) or RuntimeError (CUDA errors). The GIL is released during
// launches.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdint>

#include "bcrn_kernels.h"
#ifdef BCRN_EMULATE
#include "emu/cuda_emu.h"
#endif

#ifndef BCRN_MODULE_NAME
#define BCRN_MODULE_NAME _C
#endif
#ifndef BCRN_ARCHS
#define BCRN_ARCHS ""
#endif

namespace py = pybind11;
using bcrn::Strides4;
using I4 = std::array<int64_t, 4>;
using I2 = std::array<int64_t, 2>;

namespace {

Strides4 s4(const I4& s) { return Strides4{s[0], s[1], s[2], s[3]}; }

template <class T>
T* ptr(uint64_t v) {
    return reinterpret_cast<T*>(static_cast<uintptr_t>(v));
}

void* stream_ptr(uint64_t v) { return reinterpret_cast<void*>(static_cast<uintptr_t>(v)); }

bcrn::ConvNeXtArgs convnext_args(int dtype, uint64_t t, const I4& st, uint64_t dw, uint64_t bd, uint64_t w1,
                                 uint64_t b1, uint64_t w2, uint64_t b2, uint64_t aw, uint64_t ab, uint64_t y,
                                 const I4& sy, uint64_t a, const I4& sa, int N, int H, int W, int hid, int E) {
    bcrn::ConvNeXtArgs c{};
    c.dtype = dtype;
    c.t = ptr<const void>(t);
    c.st = s4(st);
    c.dw = ptr<const float>(dw);
    c.bd = ptr<const float>(bd);
    c.w1 = ptr<const void>(w1);
    c.b1 = ptr<const float>(b1);
    c.w2 = ptr<const void>(w2);
    c.b2 = ptr<const float>(b2);
    c.aw = ptr<const void>(aw);
    c.ab = ptr<const float>(ab);
    c.y = ptr<void>(y);
    c.sy = s4(sy);
    c.a = ptr<void>(a);
    c.sa = s4(sa);
    c.N = N;
    c.H = H;
    c.W = W;
    c.hid = hid;
    c.E = E;
    return c;
}

}  // namespace

PYBIND11_MODULE(BCRN_MODULE_NAME, m) {
    m.doc() = "bcrn_fast CUDA kernels (raw-pointer interface; use bcrn_fast.ops.cuda_ext)";
#ifdef BCRN_EMULATE
    m.attr("emulated") = true;
    m.def("set_schedule", [](int order) { emu::set_order(order); }, py::arg("order"),
          "Emulator schedule: 0/1 round-robin from the first/last thread (warps in lockstep), "
          "2/3 always the lowest/highest runnable thread (one warp races ahead).");
#else
    m.attr("emulated") = false;
#endif
    m.attr("archs") = BCRN_ARCHS;

    m.def(
        "bsconv",
        [](int dtype, uint64_t x, I4 sx, uint64_t scale, I2 ss, uint64_t pw, uint64_t dw, uint64_t bias, uint64_t res,
           I4 sr, uint64_t y, I4 sy, std::array<int, 7> sizes, int ksize, int stride, int pad, int act, int shuffle,
           int device, uint64_t stream) {
            bcrn::BSConvArgs a{};
            a.dtype = dtype;
            a.x = ptr<const void>(x);
            a.sx = s4(sx);
            a.scale = ptr<const float>(scale);
            a.ssn = ss[0];
            a.ssc = ss[1];
            a.pw = ptr<const void>(pw);
            a.dw = ptr<const float>(dw);
            a.bias = ptr<const float>(bias);
            a.res = ptr<const void>(res);
            a.sr = s4(sr);
            a.y = ptr<void>(y);
            a.sy = s4(sy);
            a.N = sizes[0];
            a.Cin = sizes[1];
            a.Cout = sizes[2];
            a.H = sizes[3];
            a.W = sizes[4];
            a.Ho = sizes[5];
            a.Wo = sizes[6];
            a.ksize = ksize;
            a.stride = stride;
            a.pad = pad;
            a.act = act;
            a.shuffle = shuffle;
            bcrn::bsconv(a, device, stream_ptr(stream));
        },
        py::call_guard<py::gil_scoped_release>(), py::arg("dtype"), py::arg("x"), py::arg("sx"), py::arg("scale"),
        py::arg("ss"), py::arg("pw"), py::arg("dw"), py::arg("bias"), py::arg("res"), py::arg("sr"), py::arg("y"),
        py::arg("sy"), py::arg("sizes"), py::arg("ksize"), py::arg("stride"), py::arg("pad"), py::arg("act"),
        py::arg("shuffle"), py::arg("device"), py::arg("stream"),
        "Fused BSConvU. sizes = (N, Cin, Cout, H, W, Ho, Wo); pointers 0 = absent (scale, res).");

    m.def(
        "convnext",
        [](int dtype, uint64_t t, I4 st, uint64_t dw, uint64_t bd, uint64_t w1, uint64_t b1, uint64_t w2, uint64_t b2,
           uint64_t aw, uint64_t ab, uint64_t y, I4 sy, uint64_t a, I4 sa, int N, int H, int W, int hid, int E,
           int device, uint64_t stream) {
            const auto c = convnext_args(dtype, t, st, dw, bd, w1, b1, w2, b2, aw, ab, y, sy, a, sa, N, H, W, hid, E);
            bcrn::convnext(c, device, stream_ptr(stream));
        },
        py::call_guard<py::gil_scoped_release>(), py::arg("dtype"), py::arg("t"), py::arg("st"), py::arg("dw"),
        py::arg("bd"), py::arg("w1"), py::arg("b1"), py::arg("w2"), py::arg("b2"), py::arg("aw"), py::arg("ab"),
        py::arg("y"), py::arg("sy"), py::arg("a"), py::arg("sa"), py::arg("N"), py::arg("H"), py::arg("W"),
        py::arg("hid"), py::arg("E"), py::arg("device"), py::arg("stream"),
        "Fused ConvNeXt block (C = 64); a = 0 skips the ESA pre-map epilogue.");

    m.def(
        "bcb_front",
        [](int dtype, uint64_t x, I4 sx, uint64_t scale, I2 ss, uint64_t pw, uint64_t dw0, uint64_t b0, uint64_t dw,
           uint64_t bd, uint64_t w1, uint64_t b1, uint64_t w2, uint64_t b2, uint64_t aw, uint64_t ab, uint64_t y, I4 sy,
           uint64_t a, I4 sa, int N, int H, int W, int hid, int E, int device, uint64_t stream) {
            bcrn::BCBFrontArgs f{};
            f.cn = convnext_args(dtype, x, sx, dw, bd, w1, b1, w2, b2, aw, ab, y, sy, a, sa, N, H, W, hid, E);
            f.scale = ptr<const float>(scale);
            f.ssn = ss[0];
            f.ssc = ss[1];
            f.pw = ptr<const void>(pw);
            f.dw0 = ptr<const float>(dw0);
            f.b0 = ptr<const float>(b0);
            bcrn::bcb_front(f, device, stream_ptr(stream));
        },
        py::call_guard<py::gil_scoped_release>(), py::arg("dtype"), py::arg("x"), py::arg("sx"), py::arg("scale"),
        py::arg("ss"), py::arg("pw"), py::arg("dw0"), py::arg("b0"), py::arg("dw"), py::arg("bd"), py::arg("w1"),
        py::arg("b1"), py::arg("w2"), py::arg("b2"), py::arg("aw"), py::arg("ab"), py::arg("y"), py::arg("sy"),
        py::arg("a"), py::arg("sa"), py::arg("N"), py::arg("H"), py::arg("W"), py::arg("hid"), py::arg("E"),
        py::arg("device"), py::arg("stream"), "BSConv 3x3 (64 -> 64) + ConvNeXt block in one kernel.");

    m.def(
        "cca_scale",
        [](int dtype, uint64_t x, I4 sx, uint64_t w1, uint64_t b1, uint64_t w2, uint64_t b2, uint64_t s, I2 ss,
           uint64_t partials, uint64_t counters, int N, int C, int R, int H, int W, int blocks, int device,
           uint64_t stream) {
            bcrn::CCAArgs a{};
            a.dtype = dtype;
            a.x = ptr<const void>(x);
            a.sx = s4(sx);
            a.w1 = ptr<const float>(w1);
            a.b1 = ptr<const float>(b1);
            a.w2 = ptr<const float>(w2);
            a.b2 = ptr<const float>(b2);
            a.s = ptr<float>(s);
            a.ssn = ss[0];
            a.ssc = ss[1];
            a.partials = ptr<float>(partials);
            a.counters = ptr<unsigned>(counters);
            a.N = N;
            a.C = C;
            a.R = R;
            a.H = H;
            a.W = W;
            a.blocks = blocks;
            bcrn::cca_scale(a, device, stream_ptr(stream));
        },
        py::call_guard<py::gil_scoped_release>(), py::arg("dtype"), py::arg("x"), py::arg("sx"), py::arg("w1"),
        py::arg("b1"), py::arg("w2"), py::arg("b2"), py::arg("s"), py::arg("ss"), py::arg("partials"),
        py::arg("counters"), py::arg("N"), py::arg("C"), py::arg("R"), py::arg("H"), py::arg("W"), py::arg("blocks"),
        py::arg("device"), py::arg("stream"), "CCA scale s[n, c] (deterministic one-launch reduction + squeeze MLP).");

    m.def("cca_blocks", &bcrn::cca_blocks, py::arg("hw"), "Blocks per image of the CCA reduction for H·W pixels.");
    m.def(
        "smem_bytes",
        [](const std::string& kernel, int dtype) -> int64_t {
            if (kernel == "bsconv") return bcrn::bsconv_smem_bytes(dtype);
            if (kernel == "convnext") return bcrn::convnext_smem_bytes(dtype);
            if (kernel == "bcb_front") return bcrn::bcb_front_smem_bytes(dtype);
            if (kernel == "cca") return bcrn::cca_smem_bytes(dtype);
            throw py::value_error("unknown kernel " + kernel);
        },
        py::arg("kernel"), py::arg("dtype"), "Dynamic shared memory per block of a kernel (bytes).");
}
