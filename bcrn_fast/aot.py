"""Ahead-of-time compilation of every Triton kernel the launchers can pick.

Runs on a CPU-only machine. The fused model and the standalone fused modules
are driven with ``backend="triton"`` on CPU tensors while
``triton.runtime.jit.JITFunction.run`` is replaced by a recorder that does
exactly what the JIT does before compiling on a GPU — bind the arguments,
derive the specialisation (16-byte divisibility of pointers and integers,
constexpr values) with Triton's own binder — and then compiles the kernel for
a :class:`~triton.backends.compiler.GPUTarget` instead of launching it. Every
(kernel, configuration) the launchers choose for the shapes and dtypes driven
here is therefore compiled with the real NVIDIA backend, and its cubin is
inspected with the ``cuobjdump`` Triton ships:

- registers, stack, local memory (spills) and shared memory per kernel;
- whether the PTX holds tensor-core instructions (``mma``/``wgmma``) — every
  GEMM-bearing kernel must, except fp32 ``ieee`` configurations, whose dots
  are exact FMA loops by design.

Run ``python -m bcrn_fast.aot [--arch 80,90] [--json FILE]`` with
``TRITON_INTERPRET`` unset. This relies on Triton's JIT internals
(``create_function_from_signature``, ``JITFunction._pack_args``), checked
against Triton 3.9.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import torch

from bcrn_fast.ops import _common


@dataclass
class KernelReport:
    kernel: str
    arch: int
    config: str  # constexprs and num_warps/num_stages, as compiled
    dtypes: str  # pointer element types
    regs: int
    stack: int
    local: int
    shared: int
    has_dot: bool
    mma: bool
    ieee_dot: bool

    @property
    def spills(self) -> bool:
        return self.stack > 0 or self.local > 0


def _cuobjdump() -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def resource_usage(cubin: bytes) -> dict[str, int]:
    """REG/STACK/SHARED/LOCAL of the (single) kernel in ``cubin``."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([_cuobjdump(), "--dump-resource-usage", f.name], capture_output=True, text=True,
                             check=True).stdout
    usage = {}
    for key in ("REG", "STACK", "SHARED", "LOCAL"):
        m = re.search(rf"\b{key}:(\d+)", out)
        usage[key] = int(m.group(1)) if m else -1
    return usage


class Recorder:
    """Replaces JITFunction.run: compile for each target arch, never launch."""

    def __init__(self, archs: tuple[int, ...]) -> None:
        self.archs = archs
        self.reports: list[KernelReport] = []
        self._seen: set[str] = set()

    def run(self, fn, *args, grid, warmup, **kwargs):  # noqa: ANN001 - mirrors JITFunction.run
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource, make_backend
        from triton.runtime.jit import create_function_from_signature

        kwargs.setdefault("debug", False)
        for arch in self.archs:
            target = GPUTarget("cuda", arch, 32)
            backend = make_backend(target)
            binder = create_function_from_signature(fn.signature, fn.params, backend)
            bound, specialization, options = binder(*args, **kwargs)
            options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
            consts = {fn.arg_names[p[0]]: v for p, v in constexprs.items() if len(p) == 1}
            config = ", ".join(f"{k}={v}" for k, v in sorted(consts.items()) if not k.startswith("stride")) + \
                f", warps={options.num_warps}, stages={options.num_stages}"
            dtypes = ",".join(sorted({v for v in signature.values() if isinstance(v, str) and v.startswith("*")}))
            key = f"{fn.__name__}|{arch}|{signature}|{constexprs}|{attrs}|{options.num_warps}|{options.num_stages}"
            if key in self._seen:
                continue
            self._seen.add(key)
            compiled = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target,
                                      options=options.__dict__)
            usage = resource_usage(compiled.asm["cubin"])
            ptx = compiled.asm["ptx"]
            ttir = compiled.asm["ttir"]
            dots = [line for line in ttir.splitlines() if "tt.dot " in line]
            # fp32 dots without an inputPrecision attribute are IEEE (exact FMA loops, no tensor cores)
            fma = [d for d in dots if re.search(r"xf32> \* tensor<[0-9x]+xf32>", d) and "inputPrecision" not in d]
            has_dot = bool(dots)
            self.reports.append(KernelReport(
                kernel=fn.__name__, arch=arch, config=config, dtypes=dtypes, regs=usage["REG"],
                stack=usage["STACK"], local=usage["LOCAL"], shared=usage["SHARED"], has_dot=has_dot,
                mma=bool(re.search(r"\b(wgmma|mma)\.", ptx)),
                ieee_dot=has_dot and len(fma) == len(dots),
            ))
        return None


@contextlib.contextmanager
def recording(archs: tuple[int, ...]) -> Iterator[Recorder]:
    """Within the block, Triton launches compile for ``archs`` instead of running."""
    from triton.runtime.jit import JITFunction

    if _common.interpreter_enabled():
        raise RuntimeError("bcrn_fast.aot needs the real Triton compiler: unset TRITON_INTERPRET")
    rec = Recorder(archs)
    original = JITFunction.run
    JITFunction.run = lambda self, *a, grid, warmup, **k: rec.run(self, *a, grid=grid, warmup=warmup, **k)
    previous = _common.AOT_RECORDING
    _common.AOT_RECORDING = True
    try:
        yield rec
    finally:
        JITFunction.run = original
        _common.AOT_RECORDING = previous


# (N, H, W) driven per dtype: 15x15 (pooled ESA map 1x1, the smallest tiles),
# 24x20, 48x40 and 180x320 (every tile-size step of the launch heuristics)
AOT_SHAPES = ((1, 15, 15), (1, 24, 20), (1, 48, 40), (2, 180, 320))


def drive_all(shapes: tuple[tuple[int, int, int], ...] = AOT_SHAPES) -> None:
    """Call every fused entry point once per dtype, precision and shape (kernels are recorded)."""
    from bcrn_fast.fused import BCRNFused, FusedBCB, FusedBSConv, FusedCCA, FusedConvNeXtBlock, FusedESA

    torch.manual_seed(0)
    modes = [(torch.float32, "ieee"), (torch.float32, "tf32"), (torch.float16, "ieee"), (torch.bfloat16, "ieee")]
    models = {s: BCRNFused(s, backend="triton") for s in (2, 3, 4)}
    standalone = [FusedBSConv(64, 64, 3, padding=1, backend="triton"), FusedBSConv(64, 16, 1, backend="triton"),
                  FusedBSConv(16, 16, 3, stride=2, backend="triton"), FusedConvNeXtBlock(backend="triton"),
                  FusedCCA(backend="triton"), FusedESA(backend="triton"), FusedBCB(backend="triton")]
    with torch.inference_mode():
        for dtype, precision in modes:
            for n, h, w in shapes:
                for model in models.values():
                    model.to(dtype).set_backend("triton", precision)
                    model(torch.rand(n, 3, h, w, dtype=dtype))
                for m in standalone:
                    m.to(dtype).set_backend("triton", precision)
                    channels = m.pw.in_channels if isinstance(m, FusedBSConv) else 64
                    m(torch.rand(n, channels, h, w, dtype=dtype))


def compile_all(archs: tuple[int, ...] = (80, 90)) -> list[KernelReport]:
    with recording(archs) as rec:
        drive_all()
    return rec.reports


def format_report(reports: list[KernelReport]) -> str:
    """One markdown row per (kernel, arch, dtypes, config); specialisations that differ
    only in divisibility hints are merged, showing the worst registers/stack/local."""
    groups: dict[tuple, list[KernelReport]] = {}
    for r in reports:
        groups.setdefault((r.kernel, r.arch, r.dtypes, r.config), []).append(r)
    lines = ["| kernel | arch | dtypes | config | variants | regs | stack | local | shared | dot | mma |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for (kernel, arch, dtypes, config), rs in sorted(groups.items()):
        dot = "ieee-fma" if all(r.ieee_dot for r in rs) else ("yes" if rs[0].has_dot else "-")
        mma = "yes" if all(r.mma for r in rs) else "no"
        lines.append(f"| {kernel} | sm_{arch} | {dtypes} | {config} | {len(rs)} | {max(r.regs for r in rs)} | "
                     f"{max(r.stack for r in rs)} | {max(r.local for r in rs)} | {max(r.shared for r in rs)} | "
                     f"{dot} | {mma} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bcrn_fast.aot", description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="80,90", help="comma-separated SM versions (default 80,90)")
    parser.add_argument("--json", help="write the per-kernel report as JSON here")
    parser.add_argument("--markdown", help="write the markdown table here too")
    args = parser.parse_args(argv)
    archs = tuple(int(a) for a in args.arch.split(","))
    reports = compile_all(archs)
    table = format_report(reports)
    print(table)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table + "\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(r) for r in reports], f, indent=1)
    bad = [r for r in reports if r.spills or (r.has_dot and not r.ieee_dot and not r.mma)]
    for r in bad:
        print(f"FAIL {r.kernel} sm_{r.arch} {r.dtypes} {r.config}: stack={r.stack} local={r.local} "
              f"mma={r.mma}", file=sys.stderr)
    print(f"{len(reports)} kernel configurations compiled, {len(bad)} failing", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
