"""Build the ``bcrn_fast._C`` CUDA extension with nvcc, without torch.

Used by ``setup.py`` (the ``build_ext`` command) and by ``tests/test_cuda_ext.py``;
it imports nothing outside the standard library except ``pybind11`` (for its
include path), so it runs inside pip's isolated build environment.

- One ``nvcc -c`` per ``.cu`` file (parallel, ``MAX_JOBS`` or the CPU count),
  each with ``--resource-usage`` so ptxas' register / spill / stack report is
  captured per file and saved as ``resource-usage.txt`` in the build folder.
- ``bindings.cpp`` (pybind11) compiles with nvcc's host compiler; the link
  uses ``--cudart static``: no libtorch, no libcudart.so at run time, and
  importing the module needs no GPU.
- Incremental: an object is rebuilt when its source, a header or its command
  line changed.
- ``emulate=True`` builds the same sources with the host C++ compiler against
  ``emu/cuda_emu.h`` (CPU emulation, tests only) as module ``_C_emu``.

Architectures: ``BCRN_CUDA_ARCHS`` (``"90"``, ``"80;90"``, ``"8.0 9.0"``...),
default sm_80, sm_86, sm_89, sm_90 as SASS plus PTX of the newest for newer GPUs.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

CSRC = Path(__file__).resolve().parent
KERNEL_SOURCES = ("bsconv.cu", "convnext.cu", "bcb_front.cu", "cca.cu")
BINDING_SOURCE = "bindings.cpp"
HEADERS = ("bcrn_kernels.h", "common.cuh", "tile_gemm.cuh", "emu/cuda_emu.h")
DEFAULT_ARCHS = ("80", "86", "89", "90")
KERNEL_PREFIXES = ("bsconv_kernel", "convnext_kernel", "bcb_front_kernel", "cca_kernel")


class BuildError(RuntimeError):
    """A compiler or linker command failed; the message holds its output."""


@dataclasses.dataclass
class BuildResult:
    path: Path  # the built module
    archs: list[str]
    seconds: float
    log: str  # compiler output of every command that ran (ptxas reports included)
    resource_report: Path | None  # resource-usage.txt (CUDA builds)


@dataclasses.dataclass
class KernelUsage:
    name: str  # demangled when c++filt is available
    arch: str  # "sm_90"
    registers: int
    stack: int  # bytes of stack frame / local memory per thread
    spill_stores: int
    spill_loads: int
    shared: int  # static shared memory (the kernels use dynamic shared memory only)

    @property
    def spills(self) -> bool:
        return self.stack > 0 or self.spill_stores > 0 or self.spill_loads > 0


# --------------------------------------------------------------------------- discovery


def find_nvcc() -> str | None:
    """nvcc from BCRN_NVCC (an explicit path), else CUDA_HOME / CUDA_PATH, PATH, /usr/local/cuda."""
    explicit = os.environ.get("BCRN_NVCC")
    if explicit is not None:
        return explicit if Path(explicit).is_file() else None
    for var in ("CUDA_HOME", "CUDA_PATH"):
        home = os.environ.get(var)
        if home and (Path(home) / "bin" / "nvcc").is_file():
            return str(Path(home) / "bin" / "nvcc")
    found = shutil.which("nvcc")
    if found:
        return found
    default = Path("/usr/local/cuda/bin/nvcc")
    return str(default) if default.is_file() else None


def cuda_include_dir(nvcc: str | None = None) -> Path | None:
    """The CUDA include folder (for the emulator build, which uses cuda_fp16.h on the host)."""
    nvcc = nvcc or find_nvcc()
    candidates = [Path(os.environ[v]) / "include" for v in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(v)]
    if nvcc:
        candidates.append(Path(nvcc).resolve().parent.parent / "include")
        try:  # wrapper scripts: ask nvcc where its headers are
            out = subprocess.run([nvcc, "--dryrun", "--version"], capture_output=True, text=True, timeout=60)
            for m in re.finditer(r"INCLUDES=\"?-I\"?([^\"\s]+)", out.stdout + out.stderr):
                candidates.append(Path(m.group(1)))
        except (OSError, subprocess.SubprocessError):
            pass
    candidates.append(Path("/usr/local/cuda/include"))
    for c in candidates:
        if (c / "cuda_fp16.h").is_file():
            return c
    return None


def requested_archs(value: str | None = None) -> list[str]:
    """Compute capabilities to build, from ``value`` or BCRN_CUDA_ARCHS (default 80, 86, 89, 90)."""
    value = os.environ.get("BCRN_CUDA_ARCHS", "") if value is None else value
    if not value.strip():
        return list(DEFAULT_ARCHS)
    archs = []
    for tok in re.split(r"[;,\s]+", value.strip()):
        if not tok:
            continue
        tok = tok.lower().removeprefix("sm_").removeprefix("compute_").replace(".", "")
        if not re.fullmatch(r"\d{2,3}a?", tok) or int(tok.rstrip("a")) < 80:
            raise BuildError(f"BCRN_CUDA_ARCHS: {tok!r} is not a compute capability >= 8.0 (e.g. '90' or '8.6')")
        if tok not in archs:
            archs.append(tok)
    return archs


def gencode_flags(archs: list[str]) -> list[str]:
    """SASS for every arch, plus PTX of the newest one (JIT-compiled on newer GPUs)."""
    flags = []
    for a in archs:
        flags += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
    newest = max(archs, key=lambda a: int(a.rstrip("a")))
    flags += ["-gencode", f"arch=compute_{newest},code=compute_{newest}"]
    return flags


def ext_suffix() -> str:
    return sysconfig.get_config_var("EXT_SUFFIX") or ".so"


def python_includes() -> list[str]:
    import pybind11

    incs = [sysconfig.get_paths()["include"], pybind11.get_include()]
    return [i for i in dict.fromkeys(incs) if i]


# --------------------------------------------------------------------------- commands


def _run(cmd: list[str], cwd: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    out = (proc.stdout or "") + (proc.stderr or "")
    if proc.returncode != 0:
        raise BuildError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{out}")
    return out


def _stale(obj: Path, src: Path, cmd: list[str]) -> bool:
    stamp = obj.with_suffix(obj.suffix + ".cmd")
    if not obj.exists() or not stamp.exists() or stamp.read_text() != " ".join(cmd):
        return True
    newest = max([src.stat().st_mtime] + [(CSRC / h).stat().st_mtime for h in HEADERS])
    return obj.stat().st_mtime < newest


def build_extension(
    output: Path | str,
    build_dir: Path | str,
    archs: list[str] | None = None,
    jobs: int | None = None,
    emulate: bool = False,
    verbose: bool = False,
) -> BuildResult:
    """Compile and link the extension module to ``output`` (a path ending in the ext suffix).

    Concurrent builds into the same ``build_dir`` (two pytest sessions) take turns on a file lock.
    """
    output, build_dir = Path(output), Path(build_dir)
    build_dir.mkdir(parents=True, exist_ok=True)
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(build_dir / ".lock", "w") as lock:
        try:
            import fcntl

            fcntl.flock(lock, fcntl.LOCK_EX)
        except ImportError:  # not POSIX: no locking
            pass
        return _build_locked(output, build_dir, archs, jobs, emulate, verbose)


def _build_locked(
    output: Path, build_dir: Path, archs: list[str] | None, jobs: int | None, emulate: bool, verbose: bool
) -> BuildResult:
    t0 = time.perf_counter()
    module = output.name.split(".")[0]
    nvcc = find_nvcc()
    archs = requested_archs() if archs is None else list(archs)

    if emulate:
        cxx = os.environ.get("CXX", "c++")
        cuda_inc = cuda_include_dir(nvcc)
        if cuda_inc is None:
            raise BuildError("emulator build: CUDA headers (cuda_fp16.h) not found; set CUDA_HOME")
        common = [
            "-std=c++17", "-O2", "-fPIC", "-fvisibility=hidden", "-fno-strict-aliasing", "-Wno-unknown-pragmas",
            "-U_FORTIFY_SOURCE", "-DBCRN_EMULATE", f"-I{CSRC}", f"-I{cuda_inc}",
        ]  # fmt: skip
        kernel_cmd = [cxx, "-x", "c++", *common]
        binding_cmd = [cxx, *common, *(f"-I{i}" for i in python_includes()), f"-DBCRN_MODULE_NAME={module}"]
        link_cmd = [cxx, "-shared", "-pthread"]
        obj_ext = ".emu.o"
    else:
        if nvcc is None:
            raise BuildError("nvcc not found (set CUDA_HOME or put nvcc on PATH)")
        info = build_dir / "build_info.h"
        text = f'#define BCRN_ARCHS "{";".join(archs)}"\n'
        if not info.exists() or info.read_text() != text:
            info.write_text(text)
        host = ["-Xcompiler", "-fPIC,-fvisibility=hidden"]
        kernel_cmd = [
            nvcc, "-std=c++17", "-O3", "-lineinfo", "--resource-usage", *host, f"-I{CSRC}", *gencode_flags(archs),
        ]  # fmt: skip
        binding_cmd = [
            nvcc, "-std=c++17", "-O2", *host, f"-I{CSRC}", f"-I{build_dir}", "-include", "build_info.h",
            *(f"-I{i}" for i in python_includes()), f"-DBCRN_MODULE_NAME={module}",
        ]  # fmt: skip
        link_cmd = [nvcc, "-shared", "--cudart", "static"]
        obj_ext = ".o"

    jobs_list = []
    for src in KERNEL_SOURCES:
        obj = build_dir / (Path(src).stem + obj_ext)
        jobs_list.append((CSRC / src, obj, [*kernel_cmd, "-c", str(CSRC / src), "-o", str(obj)]))
    obj = build_dir / (Path(BINDING_SOURCE).stem + obj_ext)
    jobs_list.append((CSRC / BINDING_SOURCE, obj, [*binding_cmd, "-c", str(CSRC / BINDING_SOURCE), "-o", str(obj)]))

    logs: dict[str, str] = {}
    todo = [(src, obj, cmd) for src, obj, cmd in jobs_list if _stale(obj, src, cmd)]
    workers = jobs or int(os.environ.get("MAX_JOBS", "0") or 0) or min(len(todo) or 1, os.cpu_count() or 1)

    def compile_one(item):
        src, obj, cmd = item
        if verbose:
            print(" ".join(cmd), flush=True)
        out = _run(cmd, build_dir)
        obj.with_suffix(obj.suffix + ".cmd").write_text(" ".join(cmd))
        obj.with_suffix(obj.suffix + ".log").write_text(out)
        return src.name, out

    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for name, out in pool.map(compile_one, todo):
            logs[name] = out

    objs = [str(o) for _, o, _ in jobs_list]
    tmp = output.with_name(output.name + ".tmp")
    link = [*link_cmd, "-o", str(tmp), *objs]
    if verbose:
        print(" ".join(link), flush=True)
    logs["link"] = _run(link, build_dir)
    os.replace(tmp, output)

    report = None
    if not emulate:
        # the report covers every kernel object, also those reused from an earlier build
        parts = []
        for src, o, _ in jobs_list[:-1]:
            log = o.with_suffix(o.suffix + ".log")
            parts.append(f"# {src.name}\n" + (log.read_text() if log.exists() else ""))
        report = build_dir / "resource-usage.txt"
        report.write_text("\n".join(parts))
    log_text = "\n".join(f"# {k}\n{v}" for k, v in logs.items())
    return BuildResult(output, archs, time.perf_counter() - t0, log_text, report)


# --------------------------------------------------------------------------- resource usage


def _demangle(names: list[str]) -> dict[str, str]:
    cxxfilt = shutil.which("c++filt")
    if not cxxfilt or not names:
        return {n: n for n in names}
    out = subprocess.run([cxxfilt], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return dict(zip(names, out, strict=True)) if len(out) == len(names) else {n: n for n in names}


def parse_ptxas_report(text: str) -> list[KernelUsage]:
    """Entry functions in nvcc ``--resource-usage`` (ptxas -v) output."""
    rows: dict[tuple[str, str], dict] = {}
    entry = arch = None
    current = None
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '([^']+)' for '(sm_\w+)'", line)
        if m:
            entry, arch = m.group(1), m.group(2)
            current = rows.setdefault((entry, arch), {"registers": 0, "stack": 0, "st": 0, "ld": 0, "shared": 0})
            continue
        if current is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            current["stack"], current["st"], current["ld"] = (int(g) for g in m.groups())
        m = re.search(r"Used (\d+) registers", line)
        if m:
            current["registers"] = int(m.group(1))
            sm = re.search(r"(\d+) bytes smem", line)
            current["shared"] = int(sm.group(1)) if sm else 0
    names = _demangle([k[0] for k in rows])
    return [
        KernelUsage(names[e], a, r["registers"], r["stack"], r["st"], r["ld"], r["shared"])
        for (e, a), r in rows.items()
    ]


def find_cuobjdump() -> str | None:
    """cuobjdump from the CUDA toolkit, else the copy Triton ships."""
    nvcc = find_nvcc()
    candidates = [shutil.which("cuobjdump")]
    if nvcc:
        candidates.append(str(Path(nvcc).resolve().parent / "cuobjdump"))
    try:
        import triton

        candidates.append(str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"))
    except ImportError:
        pass
    for c in candidates:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return c
    return None


def cuobjdump_report(path: Path | str, cuobjdump: str | None = None) -> tuple[str, list[KernelUsage]]:
    """``cuobjdump --dump-resource-usage`` of a built module: (raw text, one row per kernel and arch)."""
    cuobjdump = cuobjdump or find_cuobjdump()
    if cuobjdump is None:
        raise BuildError("cuobjdump not found")
    path = Path(path).resolve()
    text = _run([cuobjdump, "--dump-resource-usage", str(path)], path.parent)
    rows = []
    arch = "?"
    name = None
    for line in text.splitlines():
        m = re.search(r"arch = (sm_\w+)", line)
        if m:
            arch = m.group(1)
        m = re.match(r"\s*Function ([^:]+):", line)
        if m:
            name = m.group(1).strip()
            continue
        m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", line)
        if m and name:
            reg, stack, shared, local = (int(g) for g in m.groups())
            rows.append((name, arch, reg, stack, shared, local))
            name = None
    names = _demangle([r[0] for r in rows])
    usage = [KernelUsage(names[n], a, reg, max(stack, local), 0, 0, sh) for n, a, reg, stack, sh, local in rows]
    return text, usage


def format_table(usage: list[KernelUsage], smem: dict[str, int] | None = None) -> str:
    """Markdown table: kernel × arch with registers, stack/spills and shared memory."""
    lines = [
        "| kernel | arch | registers | stack / spill (bytes) | dynamic smem (bytes) |",
        "| --- | --- | --- | --- | --- |",
    ]
    for u in sorted(usage, key=lambda u: (u.name, u.arch)):
        dyn = ""
        for key, val in (smem or {}).items():
            if _short(u.name).startswith(key):
                dyn = str(val)
        spill = f"{u.stack} / {u.spill_stores + u.spill_loads}"
        lines.append(f"| `{_short(u.name)}` | {u.arch} | {u.registers} | {spill} | {dyn} |")
    return "\n".join(lines)


def _short(name: str) -> str:
    name = name.replace("(anonymous namespace)::", "").replace("bcrn::", "")
    name = re.sub(r"^void ", "", name)
    name = re.sub(r"\([^()]*\)$", "", name)
    return name.replace("__nv_bfloat16", "bf16").replace("__half", "fp16")


if __name__ == "__main__":  # python csrc/build.py OUT_DIR [--emulate]
    out_dir = Path(sys.argv[1] if len(sys.argv) > 1 else "build/cuda")
    emu = "--emulate" in sys.argv
    res = build_extension(out_dir / (("_C_emu" if emu else "_C") + ext_suffix()), out_dir / "obj", emulate=emu,
                          verbose=True)  # fmt: skip
    print(f"built {res.path} for {res.archs} in {res.seconds:.1f} s")
    if res.resource_report:
        print(format_table(parse_ptxas_report(res.resource_report.read_text())))
