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

Besides the cubin's static figures it records Triton's dynamic shared memory
(``CompiledKernel.metadata.shared``, what occupancy depends on) and the Triton
version. The launches are driven once more with the int64 offset path forced
(``WIDE_INDEX``, taken for images whose largest offset reaches 2^31) at the
largest shape, so those variants are checked too. Every row of each kernel
file's ``CONFIGS`` table must be picked by some driven launch (a few standalone
modules also run on a 4x4 map for the small-tile rows), so a new row is a new
compile check.

Run ``python -m bcrn_fast.aot [--archs 80,86,89,90] [--quick] [--json FILE]
[--markdown FILE]`` with ``TRITON_INTERPRET`` unset; ``--quick`` drives two
shapes instead of four (the smallest tiles and the largest; for the CPU
rehearsal of the GPU run). ``--merge A.json B.json --markdown FILE`` writes one
report from several runs (e.g. two Triton versions). This relies on Triton's
JIT internals (``create_function_from_signature``, ``JITFunction._pack_args``),
checked against Triton 3.6 and 3.9.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import torch

from bcrn_fast.ops import _common, backends


@dataclass
class KernelReport:
    kernel: str
    arch: int
    config: str  # constexprs and num_warps/num_stages, as compiled
    dtypes: str  # pointer element types
    regs: int
    stack: int
    local: int
    shared: int  # static shared memory of the cubin (cuobjdump SHARED)
    has_dot: bool
    mma: bool
    ieee_dot: bool
    dyn_shared: int = -1  # Triton's dynamic shared memory per program (metadata.shared), bytes
    triton: str = field(default_factory=lambda: _triton_version())
    sass: dict[str, int] = field(default_factory=dict)  # static SASS instructions per class (logged launches only)
    warps: int = 0  # num_warps

    @property
    def spills(self) -> bool:
        return self.stack > 0 or self.local > 0

    @property
    def smem_over(self) -> bool:
        """Needs more dynamic shared memory than a block of this arch can have (no launch possible)."""
        return self.dyn_shared > SMEM_LIMIT.get(self.arch, 101376)


def _triton_version() -> str:
    try:
        import triton
    except ImportError:
        return "none"
    return triton.__version__


ARCHS = (80, 86, 89, 90)  # A100; RTX 30xx / A6000; RTX 40xx / L4 / L40S; H100 / H200

# Most dynamic shared memory one block may opt into (cudaDevAttrMaxSharedMemoryPerBlockOptin, bytes): Triton
# refuses to launch a kernel needing more ("out of resources"), so the AOT check counts it as a failure.
SMEM_LIMIT = {80: 166912, 86: 101376, 87: 166912, 89: 101376, 90: 232448}


def _cuobjdump() -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def resource_usage(cubin: bytes) -> dict[str, int]:
    """REG/STACK/SHARED/LOCAL of the (single) kernel in ``cubin``."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run(
            [_cuobjdump(), "--dump-resource-usage", f.name], capture_output=True, text=True, check=True
        ).stdout
    usage = {}
    for key in ("REG", "STACK", "SHARED", "LOCAL"):
        m = re.search(rf"\b{key}:(\d+)", out)
        usage[key] = int(m.group(1)) if m else -1
    return usage


# --------------------------------------------------------------------------- SASS instruction mix
# Instruction classes, by SASS mnemonic (the opcode before its first '.'). Uniform-datapath (U*) instructions
# other than the ones named are "uniform"; anything unnamed is "other".
SASS_CLASSES = (
    "tensor",  # HMMA / HGMMA / IMMA / IGMMA / DMMA: tensor-core MMA
    "ffma",
    "fmul",
    "fadd",
    "fp_other",  # FMNMX, FSETP, FSEL, FCHK, half-precision HADD2/HFMA2/HMUL2 ...
    "mufu",  # MUFU: ex2, rcp, rsq, lg2, sin/cos, tanh (the special-function unit, 1/8 of the FP32 rate)
    "cvt",  # F2F, F2FP, F2I, I2F, I2FP
    "int",  # IMAD, IADD3, LOP3, ISETP, SEL, LEA, SHF, PRMT ...
    "uniform",  # U* (ULDC, UIADD3, UMOV ...): the per-warp scalar datapath
    "ldg",  # LDG, LDGSTS (cp.async), UTMALDG (TMA), generic LD: global loads
    "stg",  # STG, generic ST, UTMASTG: global stores
    "atom",  # ATOMG, ATOM, RED: global atomics / reductions
    "shared",  # LDS, STS, LDSM, STSM, ATOMS
    "const",  # LDC: constant-bank loads (kernel arguments)
    "warp",  # SHFL, REDUX, VOTE, MATCH: cross-lane
    "ctrl",  # BRA, BAR, EXIT, BSSY/BSYNC, DEPBAR, MEMBAR, WARPGROUP, NOP ...
    "other",
)
_SASS_CLASS = {
    **dict.fromkeys(("HMMA", "HGMMA", "IMMA", "IGMMA", "DMMA", "BMMA", "QGMMA", "UTCHMMA"), "tensor"),
    "FFMA": "ffma",
    "FMUL": "fmul",
    "FADD": "fadd",
    **dict.fromkeys(
        (
            "FMNMX",
            "FSETP",
            "FSEL",
            "FCHK",
            "FRND",
            "FSET",
            "FSWZADD",
            "HADD2",
            "HMUL2",
            "HFMA2",
            "HMNMX2",
            "HSETP2",
            "HSET2",
            "DADD",
            "DMUL",
            "DFMA",
            "DSETP",
            "FMUL32I",
            "FADD32I",
            "FFMA32I",
        ),
        "fp_other",
    ),
    "MUFU": "mufu",
    **dict.fromkeys(("F2F", "F2FP", "F2I", "I2F", "I2FP", "F2IP", "FRND"), "cvt"),
    **dict.fromkeys(
        (
            "IMAD",
            "IADD3",
            "ISETP",
            "LOP3",
            "SEL",
            "LEA",
            "SHF",
            "IABS",
            "VIADD",
            "VIMNMX",
            "VIADDMNMX",
            "IMNMX",
            "PRMT",
            "SGXT",
            "POPC",
            "FLO",
            "BREV",
            "IMUL",
            "LOP",
            "IADD",
            "ISCADD",
            "BMSK",
            "PLOP3",
            "P2R",
            "R2P",
            "IDP",
            "IMAD32I",
            "IADD32I",
            "LOP32I",
            "MOV",
            "MOV32I",
            "CS2R",
            "S2R",
            "S2UR",
            "R2UR",
            "SHL",
            "SHR",
            "BFE",
            "BFI",
        ),
        "int",
    ),
    **dict.fromkeys(("LDG", "LDGSTS", "UTMALDG", "UBLKCP", "LD", "UTMAPF"), "ldg"),
    **dict.fromkeys(("STG", "ST", "UTMASTG"), "stg"),
    **dict.fromkeys(("ATOMG", "ATOM", "RED", "REDG"), "atom"),
    **dict.fromkeys(("LDS", "STS", "LDSM", "STSM", "ATOMS", "LDSMU"), "shared"),
    "LDC": "const",
    **dict.fromkeys(("SHFL", "REDUX", "VOTE", "VOTEU", "MATCH"), "warp"),
    **dict.fromkeys(
        (
            "BRA",
            "BRX",
            "JMP",
            "JMX",
            "BAR",
            "EXIT",
            "BSSY",
            "BSYNC",
            "DEPBAR",
            "LDGDEPBAR",
            "MEMBAR",
            "FENCE",
            "WARPGROUP",
            "WARPSYNC",
            "NOP",
            "ERRBAR",
            "CGAERRBAR",
            "CCTL",
            "CALL",
            "RET",
            "YIELD",
            "SYNCS",
            "ARRIVES",
            "UCGABAR_ARV",
            "UCGABAR_WAIT",
            "ELECT",
            "ACQBULK",
            "BPT",
            "KILL",
        ),
        "ctrl",
    ),
}
# FLOPs of one warp's issue of an MMA: HMMA/IMMA shapes are per warp; HGMMA (wgmma) is one warpgroup-wide MMA
# that each of its 4 warps issues, so a warp's issue is a quarter of M·N·K.
_HMMA_SHAPES = {"16816": (16, 8, 16), "1688": (16, 8, 8), "16832": (16, 8, 32), "884": (8, 8, 4), "16864": (16, 8, 64)}
_SASS_LINE = re.compile(
    r"^\s+/\*([0-9a-f]{4,})\*/\s+(?:(@!?U?P[T0-9]+)\s+)?([A-Z][A-Z0-9_]*)((?:\.[A-Za-z0-9_]+)*)([^;]*);"
)


def sass_class(opcode: str) -> str:
    """The :data:`SASS_CLASSES` entry of a SASS mnemonic (``FFMA``, ``HGMMA`` ...)."""
    cls = _SASS_CLASS.get(opcode)
    if cls is None:
        cls = "uniform" if opcode.startswith("U") else "other"
    return cls


def mma_flops(opcode: str, modifiers: str) -> float:
    """FLOPs (2 per multiply-add) of one warp's issue of the MMA ``opcode`` with ``modifiers`` (``.16816.F32``)."""
    mods = modifiers.lstrip(".").split(".")
    if opcode in ("HGMMA", "IGMMA", "QGMMA"):
        m = re.match(r"(\d+)x(\d+)x(\d+)", mods[0])
        return 2 * int(m.group(1)) * int(m.group(2)) * int(m.group(3)) / 4 if m else 0.0
    if opcode in ("HMMA", "IMMA", "DMMA", "BMMA"):
        shape = _HMMA_SHAPES.get(mods[0])
        return 2.0 * shape[0] * shape[1] * shape[2] if shape else 0.0
    return 0.0


@dataclass
class Sass:
    """A kernel's SASS as counted: one class per executed instruction, its MMA FLOPs per warp issue, the loops.

    ``loops``: ``(first, last)`` instruction indices of each loop, found as a back-edge (a branch to an
    address at or before its own); loops sharing a header are one loop. ``skipped``: instructions never
    counted (subroutines reached by ``CALL``, e.g. the IEEE division slow path, and the padding after the
    final self-branch). ``guarded_from``: the instruction after the first predicated ``EXIT`` that follows a
    value-returning atomic (``ATOMG``/``ATOM``): what follows runs only in the programs the atomic elected
    (the CCA merges: the last program of a group or image), so it counts 0 per program.
    """

    classes: list[str]
    flops: list[float]
    loops: list[tuple[int, int]]
    skipped: int = 0
    guarded_from: int | None = None  # instructions from here on run only in programs that won an atomic

    def parents(self) -> list[int]:
        """Index of each loop's innermost enclosing loop (-1 at top level)."""
        out = []
        for i, (a, b) in enumerate(self.loops):
            enclosing = [j for j, (c, d) in enumerate(self.loops) if j != i and c <= a and b <= d and (c, d) != (a, b)]
            out.append(max(enclosing, key=lambda j: self.loops[j][0]) if enclosing else -1)
        return out

    def static(self) -> dict[str, int]:
        """Instructions per class in the cubin (each counted once)."""
        counts = dict.fromkeys(SASS_CLASSES, 0)
        for c in self.classes:
            counts[c] += 1
        counts["total"] = len(self.classes)
        return counts

    def weighted(self, trips: list[float | None]) -> tuple[dict[str, float], float]:
        """Per-warp executed instructions per class and MMA FLOPs per warp, each loop body ``trips[i]`` times
        (``None``: once)."""
        weight = [1.0] * len(self.classes)
        if self.guarded_from is not None:
            weight[self.guarded_from :] = [0.0] * (len(weight) - self.guarded_from)
        for (a, b), t in zip(self.loops, trips, strict=True):
            if t is None:
                continue
            for k in range(a, b + 1):
                weight[k] *= t
        counts = dict.fromkeys(SASS_CLASSES, 0.0)
        for c, w in zip(self.classes, weight, strict=True):
            counts[c] += w
        counts["total"] = sum(weight)
        return counts, sum(f * w for f, w in zip(self.flops, weight, strict=True))


def parse_sass(text: str) -> Sass:
    """Classify the instructions of ``cuobjdump --dump-sass`` output (one kernel) and find its loops."""
    insts = []  # (address, opcode, modifiers, predicated, branch/call target or None)
    for line in text.splitlines():
        m = _SASS_LINE.match(line)
        if m:
            t = re.search(r"0x([0-9a-f]+)", m.group(5))
            insts.append(
                (int(m.group(1), 16), m.group(3), m.group(4), m.group(2) is not None, t and int(t.group(1), 16))
            )
    index = {inst[0]: i for i, inst in enumerate(insts)}
    # the final self-branch ends the code: padding follows
    end = next((i + 1 for i, (a, op, _m, _p, t) in enumerate(insts) if op == "BRA" and t == a), len(insts))
    # A subroutine (e.g. the IEEE division slow path) lies after the body's last unpredicated EXIT, from its
    # entry to its RET. A CALL.REL.NOINC into the body itself is ptxas's convergent jump (sm_80 loop exits).
    last_exit = max((a for a, op, _m, p, _t in insts[:end] if op == "EXIT" and not p), default=-1)
    excluded = [False] * len(insts)
    for _a, op, _m, _p, t in insts:
        if op == "CALL" and t in index and t > last_exit:
            for k in range(index[t], len(insts)):
                excluded[k] = True
                if insts[k][1] == "RET":
                    break
    headers: dict[int, int] = {}  # loop header -> its last back-edge
    for i, (a, op, _m, _p, t) in enumerate(insts[:end]):
        if op in ("BRA", "JMP") and t is not None and t < a and t in index and not excluded[i]:
            headers[index[t]] = max(headers.get(index[t], i), i)
    keep = [i for i in range(end) if not excluded[i]]
    new_index = {old: new for new, old in enumerate(keep)}
    loops = sorted((new_index[h], new_index[e]) for h, e in headers.items() if h in new_index and e in new_index)
    guarded_from, atomic = None, False
    for k, i in enumerate(keep):
        atomic = atomic or insts[i][1] in ("ATOMG", "ATOM")
        if atomic and insts[i][1] == "EXIT" and insts[i][3]:
            guarded_from = k + 1
            break
    return Sass(
        classes=[sass_class(insts[i][1]) for i in keep],
        flops=[mma_flops(insts[i][1], insts[i][2]) for i in keep],
        loops=loops,
        skipped=len(insts) - len(keep),
        guarded_from=guarded_from,
    )


def disassemble(cubin: bytes) -> str:
    """``cuobjdump --dump-sass`` of ``cubin``."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([_cuobjdump(), "--dump-sass", f.name], capture_output=True, text=True, check=True).stdout


# --------------------------------------------------------------------------- TTIR loops and their trip counts
_TTIR_DEF = re.compile(r"^(%[\w]+)(?::\d+)? = (\"?[\w.]+\"?)\s*(.*)$")
_SCALAR_OPS = {
    "arith.addi": lambda a, b: a + b,
    "arith.subi": lambda a, b: a - b,
    "arith.muli": lambda a, b: a * b,
    "arith.divsi": lambda a, b: int(a / b) if b else None,
    "arith.divui": lambda a, b: a // b if b else None,
    "arith.ceildivsi": lambda a, b: -(-a // b) if b else None,
    "arith.remsi": lambda a, b: a - b * int(a / b) if b else None,
    "arith.remui": lambda a, b: a % b if b else None,
    "arith.maxsi": max,
    "arith.minsi": min,
    "arith.maxui": max,
    "arith.minui": min,
    "arith.andi": lambda a, b: a & b,
    "arith.ori": lambda a, b: a | b,
    "arith.shli": lambda a, b: a << b,
    "arith.shrsi": lambda a, b: a >> b,
    "arith.shrui": lambda a, b: a >> b,
}
_CMP = {
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "slt": lambda a, b: a < b,
    "sle": lambda a, b: a <= b,
    "sgt": lambda a, b: a > b,
    "sge": lambda a, b: a >= b,
    "ult": lambda a, b: a < b,
    "ule": lambda a, b: a <= b,
    "ugt": lambda a, b: a > b,
    "uge": lambda a, b: a >= b,
}


@dataclass
class TtirLoop:
    """An ``scf.for`` of the kernel's TTIR (source-level loops; ``tl.static_range`` is already unrolled)."""

    bounds: tuple[str, str, str]  # SSA names (or literals) of lower bound, upper bound, step
    parent: int  # enclosing scf.for (-1: none)
    guarded: bool  # inside an scf.if whose condition depends on an atomic's result (e.g. the CCA merge)


@dataclass
class Ttir:
    args: list[str]
    defs: dict[str, tuple[str, list[str], str]]  # name -> (op, operands, rest of the line)
    loops: list[TtirLoop]
    dots: list[tuple[int, int]]  # (innermost enclosing loop or -1, FLOPs of one execution: 2·M·N·K)
    used_args: set[str] = field(default_factory=set)  # arguments the body refers to


def parse_ttir(text: str) -> Ttir:
    """Loops (with nesting and atomic guards), scalar definitions and dots of a TTIR module (one function)."""
    args: list[str] = []
    defs: dict[str, tuple[str, list[str], str]] = {}
    loops: list[TtirLoop] = []
    dots: list[tuple[int, int]] = []
    stack: list[tuple[str, int, bool]] = []  # (kind, loop index, guarded)
    body: list[str] = []

    def loop_now() -> int:
        return next((i for kind, i, _ in reversed(stack) if kind == "for"), -1)

    def guarded_now() -> bool:
        return any(g for _, _, g in stack)

    def depends_on_atomic(name: str, seen: set[str]) -> bool:
        if name in seen or name not in defs:
            return False
        seen.add(name)
        op, operands, _ = defs[name]
        return "atomic" in op or any(depends_on_atomic(o, seen) for o in operands)

    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("tt.func"):
            args = re.findall(r"%(\w+):", line.split(") attributes")[0])
            stack.append(("func", -1, False))
            continue
        if line.startswith("}"):
            kind = stack.pop() if stack else ("", -1, False)
            if line.rstrip().endswith("{"):  # } else {
                stack.append(kind)
            continue
        body.append(line)
        m = _TTIR_DEF.match(line)
        if m:
            name, op, rest = m.group(1), m.group(2).strip('"'), m.group(3)
            operands = re.findall(r"%[\w]+", rest.split(" : ")[0].split(" loc(")[0])
            defs[name] = (op, operands, rest)
        if "scf.for " in line:
            b = re.search(r"scf\.for %\w+ = (\S+) to (\S+) step (\S+)", line)
            loops.append(TtirLoop(bounds=tuple(b.groups()), parent=loop_now(), guarded=guarded_now()))
            stack.append(("for", len(loops) - 1, False))
        elif re.search(r"\bscf\.if %", line) and line.endswith("{"):
            cond = re.search(r"scf\.if (%\w+)", line).group(1)
            stack.append(("if", -1, depends_on_atomic(cond, set())))
        elif line.endswith("{"):
            stack.append(("other", -1, False))
        if "tt.dot " in line:
            shapes = re.findall(r"tensor<(\d+)x(\d+)x", line)
            if len(shapes) >= 2:
                (mm, kk), (_k2, nn) = shapes[0], shapes[1]
                dots.append((loop_now(), 2 * int(mm) * int(nn) * int(kk)))
    used = {a for a in args if any(re.search(rf"%{a}\b", line) for line in body)}
    return Ttir(args=args, defs=defs, loops=loops, dots=dots, used_args=used)


def _ttir_value(ttir: Ttir, token: str, env: dict[str, object], depth: int = 0) -> int | None:
    """The integer value of an SSA name or literal under the launch's argument values (program ids: 0)."""
    if re.fullmatch(r"-?\d+", token):
        return int(token)
    name = token.lstrip("%")
    if name in env:
        v = env[name]
        return int(v) if isinstance(v, (int, bool)) else None
    if token not in ttir.defs or depth > 200:
        return None
    op, operands, rest = ttir.defs[token]
    if op == "arith.constant":
        m = re.match(r"(-?\d+|true|false)\s*:\s*i\d+", rest)
        if not m:
            return None
        return {"true": 1, "false": 0}[m.group(1)] if m.group(1) in ("true", "false") else int(m.group(1))
    if op in ("tt.get_program_id",):
        return 0
    if "tensor<" in rest.split(" loc(")[0].split(" : ")[-1]:
        return None
    vals = [_ttir_value(ttir, o, env, depth + 1) for o in operands]
    if any(v is None for v in vals):
        return None
    if op in _SCALAR_OPS and len(vals) == 2:
        return _SCALAR_OPS[op](*vals)
    if op in ("arith.extsi", "arith.extui", "arith.trunci", "arith.index_cast", "arith.index_castui") and vals:
        return vals[0]
    if op == "arith.cmpi" and len(vals) == 2:
        return int(_CMP[rest.split(",")[0].strip()](*vals))
    if op == "arith.select" and len(vals) == 3:
        return vals[1] if vals[0] else vals[2]
    return None


def ttir_trips(ttir: Ttir, env: dict[str, object]) -> list[int | None]:
    """Trip count of each TTIR loop for one launch (``env``: argument name -> value); 0 for atomic-guarded loops."""
    trips: list[int | None] = []
    for loop in ttir.loops:
        lb, ub, step = (_ttir_value(ttir, t, env) for t in loop.bounds)
        if loop.guarded:
            trips.append(0)
        elif lb is None or ub is None or not step:
            trips.append(None)
        else:
            trips.append(max(0, -(-(ub - lb) // step)))
    return trips


def _shape(parents: list[int]) -> tuple:
    """The nesting shape of a loop forest (children in program order)."""

    def sub(p: int) -> tuple:
        return tuple(sub(i) for i, q in enumerate(parents) if q == p)

    return sub(-1)


def _kept_parent(ttir: Ttir, i: int, remap: dict[int, int]) -> int:
    """Loop ``i``'s innermost enclosing loop among the kept ones (``remap``: old index -> new), or -1."""
    p = ttir.loops[i].parent
    while p != -1 and p not in remap:
        p = ttir.loops[p].parent
    return remap.get(p, -1)


def match_loops(ttir: Ttir, sass: Sass, env: dict[str, object]) -> tuple[list[int | None], bool]:
    """Trip counts of the SASS loops, taken from the TTIR loops they match (same nesting shape in program order;
    failing that, with the constant-trip TTIR loops removed as unrolled). Unmatched: ``None`` each, False."""
    trips = ttir_trips(ttir, env)
    sass_parents = sass.parents()
    target = _shape(sass_parents)
    constant = [all(_ttir_value(ttir, t, {}) is not None for t in loop.bounds) for loop in ttir.loops]
    for drop_constant in (False, True):
        keep = [i for i in range(len(ttir.loops)) if not (drop_constant and constant[i])]
        remap = {old: new for new, old in enumerate(keep)}

        parents = [_kept_parent(ttir, i, remap) for i in keep]
        if _shape(parents) == target:
            # both lists are in program order (TTIR by line, SASS by address), so preorder matches index order
            return [trips[i] for i in keep], True
    return [None] * len(sass.loops), False


def dot_flops(ttir: Ttir, trips: list[int | None]) -> float | None:
    """FLOPs of every ``tt.dot`` of one program (2·M·N·K times the enclosing loops' trips); None if unknown."""
    total = 0.0
    for loop, flops in ttir.dots:
        w, i = 1, loop
        while i != -1:
            if trips[i] is None:
                return None
            w *= trips[i]
            i = ttir.loops[i].parent
        total += w * flops
    return total


class Recorder:
    """Replaces JITFunction.run: compile for each target arch, never launch."""

    def __init__(self, archs: tuple[int, ...]) -> None:
        self.archs = archs
        self.reports: list[KernelReport] = []
        self.rows_hit: set[tuple[str, str, int]] = set()  # (kernel file, table, row) the launchers looked up
        self.phase: str | None = None  # while set, every launch is logged in ``launches`` under this name
        self.launches: list[dict] = []
        # key -> [report index, cubin, TTIR, SASS]: the SASS is disassembled at the first logged launch only
        self._seen: dict[str, list] = {}

    def run(self, fn, *args, grid, warmup, **kwargs):  # noqa: ANN001 - mirrors JITFunction.run
        from triton.backends.compiler import GPUTarget
        from triton.compiler import make_backend
        from triton.runtime.jit import create_function_from_signature

        kwargs.setdefault("debug", False)
        for arch in self.archs:
            target = GPUTarget("cuda", arch, 32)
            backend = make_backend(target)
            binder = create_function_from_signature(fn.signature, fn.params, backend)
            bound, specialization, options = binder(*args, **kwargs)
            options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
            consts = {fn.arg_names[p[0]]: v for p, v in constexprs.items() if len(p) == 1}
            config = (
                ", ".join(f"{k}={v}" for k, v in sorted(consts.items()) if not k.startswith("stride"))
                + f", warps={options.num_warps}, stages={options.num_stages}"
                + (f", maxnreg={options.maxnreg}" if getattr(options, "maxnreg", None) else "")
            )
            dtypes = ",".join(sorted({v for v in signature.values() if isinstance(v, str) and v.startswith("*")}))
            key = f"{fn.__name__}|{arch}|{signature}|{constexprs}|{attrs}|{config}"
            if key not in self._seen:
                self._compile(fn, key, arch, target, signature, constexprs, attrs, options, config, dtypes)
            if self.phase is not None:
                self._log_launch(fn, self._seen[key], grid, bound)
        return None

    def _compile(self, fn, key, arch, target, signature, constexprs, attrs, options, config, dtypes) -> None:  # noqa: ANN001, PLR0913
        import triton
        from triton.compiler import ASTSource

        compiled = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target, options=options.__dict__)
        usage = resource_usage(compiled.asm["cubin"])
        ttir_parsed = parse_ttir(compiled.asm["ttir"])
        ptx = compiled.asm["ptx"]
        ttir = compiled.asm["ttir"]
        dots = [line for line in ttir.splitlines() if "tt.dot " in line]
        # fp32 dots without an inputPrecision attribute are IEEE (exact FMA loops, no tensor cores)
        fma = [d for d in dots if re.search(r"xf32> \* tensor<[0-9x]+xf32>", d) and "inputPrecision" not in d]
        has_dot = bool(dots)
        self.reports.append(
            KernelReport(
                kernel=fn.__name__,
                arch=arch,
                config=config,
                dtypes=dtypes,
                regs=usage["REG"],
                stack=usage["STACK"],
                local=usage["LOCAL"],
                shared=usage["SHARED"],
                has_dot=has_dot,
                mma=bool(re.search(r"\b(wgmma|mma)\.", ptx)),
                ieee_dot=has_dot and len(fma) == len(dots),
                dyn_shared=int(getattr(compiled.metadata, "shared", -1)),
                warps=options.num_warps,
            )
        )
        self._seen[key] = [len(self.reports) - 1, compiled.asm["cubin"], ttir_parsed, None]

    def _log_launch(self, fn, seen: list, grid, bound: dict) -> None:  # noqa: ANN001
        """One launch of ``self.phase``: programs x per-program executed instructions, FLOPs and bytes."""
        index, cubin, ttir, sass = seen
        report = self.reports[index]
        if sass is None:
            sass = seen[3] = parse_sass(disassemble(cubin))
            report.sass = sass.static()
        if callable(grid):
            grid = grid(bound)
        grid = [int(g) for g in tuple(grid) + (1,) * (3 - len(tuple(grid)))]
        env = {k: v for k, v in bound.items() if isinstance(v, (int, bool)) and not isinstance(v, torch.Tensor)}
        trips, matched = match_loops(ttir, sass, env)
        counts, flops = sass.weighted(trips)
        nbytes, seen_ptrs = 0, set()
        for name, v in bound.items():
            if isinstance(v, torch.Tensor) and name in ttir.used_args:
                ident = (v.data_ptr(), v.numel(), v.dtype)
                if ident not in seen_ptrs:
                    seen_ptrs.add(ident)
                    nbytes += v.numel() * v.element_size()
        self.launches.append(
            {
                "phase": self.phase,
                "kernel": fn.__name__,
                "arch": report.arch,
                "config": report.config,
                "report": index,
                "grid": grid,
                "programs": grid[0] * grid[1] * grid[2],
                "warps": report.warps,
                "trips": trips,
                "ttir_trips": ttir_trips(ttir, env),
                "loops_matched": matched,
                # warp instructions per program (what ncu's smsp__inst_executed counts), by class
                "per_program": {k: v * report.warps for k, v in counts.items()},
                "mma_flops": flops * report.warps,  # per program, from the SASS MMA shapes
                "dot_flops": dot_flops(ttir, ttir_trips(ttir, env)),  # per program, from the TTIR tt.dot shapes
                "bytes": nbytes,  # every distinct tensor argument the kernel uses, moved once (whole launch)
            }
        )


@contextlib.contextmanager
def _triton_on_any_device() -> Iterator[None]:
    """Within the block, ``backend="triton"`` accepts CPU tensors: the launches are recorded, nothing runs."""
    original = backends.triton_can_run
    backends.triton_can_run = lambda device: True
    try:
        yield
    finally:
        backends.triton_can_run = original


CONFIG_TABLES = ("bsconv", "convnext", "cca", "esa")  # kernels/<name>.py files with *CONFIGS tables


def _tables(name: str) -> dict[str, tuple]:
    """The launch-configuration tables of ``kernels/<name>.py``: every module-level ``*CONFIGS`` tuple."""
    module = importlib.import_module(f"bcrn_fast.kernels.{name}")
    return {attr: v for attr, v in vars(module).items() if attr.endswith("CONFIGS") and isinstance(v, tuple)}


def config_rows() -> list[tuple[str, str, int, object]]:
    """Every launch-configuration row: (kernel file, table, index, ``Rule``) of each ``*CONFIGS`` table."""
    return [
        (name, attr, i, rule)
        for name in CONFIG_TABLES
        for attr, table in _tables(name).items()
        for i, rule in enumerate(table)
    ]


@contextlib.contextmanager
def _rows_looked_up(hits: set[tuple[str, str, int]]) -> Iterator[None]:
    """Within the block, each table row a launcher picks is added to ``hits`` as (file, table, index)."""
    modules = {name: importlib.import_module(f"bcrn_fast.kernels.{name}") for name in CONFIG_TABLES}
    originals = {name: m.pick for name, m in modules.items()}
    table_of = {id(t): (name, attr) for name in CONFIG_TABLES for attr, t in _tables(name).items()}

    def spy(name: str):  # noqa: ANN202
        def pick(rules, **facts):  # noqa: ANN001, ANN202 - mirrors bcrn_fast.kernels.pick
            config = originals[name](rules, **facts)
            file, attr = table_of.get(id(rules), (name, "?"))
            hits.add((file, attr, next(i for i, r in enumerate(rules) if r.config is config)))
            return config

        return pick

    for name, m in modules.items():
        m.pick = spy(name)
    try:
        yield
    finally:
        for name, m in modules.items():
            m.pick = originals[name]


@contextlib.contextmanager
def recording(archs: tuple[int, ...]) -> Iterator[Recorder]:
    """Within the block, Triton launches compile for ``archs`` instead of running."""
    from triton.runtime.jit import JITFunction

    if backends.interpreter_enabled():
        raise RuntimeError("bcrn_fast.aot needs the real Triton compiler: unset TRITON_INTERPRET")
    rec = Recorder(archs)
    original = JITFunction.run
    JITFunction.run = lambda self, *a, grid, warmup, **k: rec.run(self, *a, grid=grid, warmup=warmup, **k)
    try:
        with _triton_on_any_device(), _rows_looked_up(rec.rows_hit):
            yield rec
    finally:
        JITFunction.run = original


# (N, H, W) driven per dtype: 15x15 (pooled ESA map 1x1, the smallest tiles),
# 24x20, 48x40 and 180x320 (every tile-size step of the launch heuristics)
AOT_SHAPES = ((1, 15, 15), (1, 24, 20), (1, 48, 40), (2, 180, 320))
QUICK_SHAPES = ((1, 15, 15), (2, 180, 320))  # --quick: the smallest and the largest tiles
WIDE_SHAPE = (2, 180, 320)  # driven again with the int64 offset path forced (what a > 5.6 M-pixel image takes)
# Standalone BSConv / ConvNeXt / CCA (no ESA, which needs 15x15) on a 4x4 map: the small-tile table rows
SMALL_SHAPE = (1, 4, 4)


@contextlib.contextmanager
def _wide_index_forced() -> Iterator[None]:
    previous = _common.FORCE_WIDE_INDEX
    _common.FORCE_WIDE_INDEX = True
    try:
        yield
    finally:
        _common.FORCE_WIDE_INDEX = previous


def drive_all(
    shapes: tuple[tuple[int, int, int], ...] = AOT_SHAPES,
    wide_shape: tuple[int, int, int] | None = WIDE_SHAPE,
    progress: bool = False,
) -> None:
    """Call every fused entry point once per dtype, precision and shape (kernels are recorded)."""
    from bcrn_fast.fused import BCRNFused, FusedBCB, FusedBSConv, FusedCCA, FusedConvNeXtBlock, FusedESA

    torch.manual_seed(0)
    modes = [(torch.float32, "ieee"), (torch.float32, "tf32"), (torch.float16, "ieee"), (torch.bfloat16, "ieee")]
    models = {s: BCRNFused(s, backend="triton") for s in (2, 3, 4)}
    standalone = [
        FusedBSConv(64, 64, 3, padding=1, backend="triton"),
        FusedBSConv(64, 16, 1, backend="triton"),
        FusedBSConv(16, 16, 3, stride=2, backend="triton"),
        FusedBSConv(32, 16, 3, padding=1, backend="triton"),  # a 32-wide tile (K chunk 32): the generic rows
        FusedConvNeXtBlock(backend="triton"),
        FusedCCA(backend="triton"),
        FusedESA(backend="triton"),
        FusedBCB(backend="triton"),
    ]
    small = [m for m in standalone if not isinstance(m, (FusedESA, FusedBCB))]
    runs = [(shape, False) for shape in shapes] + ([(wide_shape, True)] if wide_shape else [])
    with torch.inference_mode():
        for dtype, precision in modes:
            for (n, h, w), wide in runs:
                if progress:
                    print(
                        f"aot: {str(dtype).replace('torch.', '')} {precision} {n}x{h}x{w}"
                        f"{' wide-index' if wide else ''}",
                        file=sys.stderr,
                        flush=True,
                    )
                with _wide_index_forced() if wide else contextlib.nullcontext():
                    for model in models.values():
                        model.to(dtype).set_backend("triton", precision)
                        model(torch.rand(n, 3, h, w, dtype=dtype))
                    for m in standalone:
                        m.to(dtype).set_backend("triton", precision)
                        m(torch.rand(n, _in_channels(m), h, w, dtype=dtype))
            n, h, w = SMALL_SHAPE
            for m in small:
                m.to(dtype).set_backend("triton", precision)
                m(torch.rand(n, _in_channels(m), h, w, dtype=dtype))
        _drive_small_esa_apply()


# LR (H, W) of the forwards whose launches are logged for the instruction table: BCRNFused x4, fp16 storage
FORWARD_SHAPES = ((180, 320), (540, 960))


def forward_phase(scale: int, dtype: torch.dtype, h: int, w: int) -> str:
    """The launch-log name of one forward: ``x4 fp16 320x180`` (W x H)."""
    return f"x{scale} {str(dtype).replace('torch.', '').replace('float', 'fp')} {w}x{h}"


def drive_forward(
    rec: Recorder,
    shapes: tuple[tuple[int, int], ...] = FORWARD_SHAPES,
    scale: int = 4,
    dtype: torch.dtype = torch.float16,
    precision: str = "ieee",
) -> None:
    """One BCRNFused forward per LR shape (batch 1), each launch logged under :func:`forward_phase`."""
    from bcrn_fast.fused import BCRNFused

    torch.manual_seed(0)
    model = BCRNFused(scale, backend="triton").to(dtype)
    model.set_backend("triton", precision)
    with torch.inference_mode():
        for h, w in shapes:
            rec.phase = forward_phase(scale, dtype, h, w)
            try:
                model(torch.rand(1, 3, h, w, dtype=dtype))
            finally:
                rec.phase = None


def _in_channels(module: torch.nn.Module) -> int:
    return module.pw.in_channels if hasattr(module, "pw") else 64


def _drive_small_esa_apply() -> None:
    """esa_apply's launcher on a 4x4 map (the op itself needs 15x15): the fp32 small-tile rows (IEEE, tf32)."""
    from bcrn_fast.fused import FusedESA
    from bcrn_fast.ops.esa import esa_apply_triton

    n, h, w = SMALL_SHAPE
    pack = FusedESA()._packed(torch.float32).esa
    t = torch.rand(n, 64, h, w).to(memory_format=torch.channels_last)
    c3 = torch.rand(n, 16, 1, 1).to(memory_format=torch.channels_last)
    out = torch.empty_like(t)
    for precision in ("ieee", "tf32"):
        esa_apply_triton(t, c3, pack.wf, pack.bf, pack.w4, pack.b4, out, 0, None, None, None, None, precision)


def compile_all(
    archs: tuple[int, ...] = ARCHS,
    quick: bool = False,
    progress: bool = False,
    forward_shapes: tuple[tuple[int, int], ...] = FORWARD_SHAPES,
    forward_only: bool = False,
) -> tuple[list[KernelReport], list[dict], list[dict]]:
    """The compiled kernel configurations, every ``CONFIGS`` row with whether a launch compiled it, and the
    logged launches of the x4 fp16 forwards at ``forward_shapes`` (``()``: none; ``forward_only``: only those)."""
    with recording(archs) as rec:
        if not forward_only:
            drive_all(QUICK_SHAPES if quick else AOT_SHAPES, progress=progress)
        if forward_shapes:
            if progress:
                print(f"aot: x4 fp16 forwards at {forward_shapes} (launches logged)", file=sys.stderr, flush=True)
            drive_forward(rec, forward_shapes)
    rows = [
        {
            "table": name,
            "name": attr,
            "row": i,
            "when": rule.when,
            "config": repr(rule.config),
            "compiled": (name, attr, i) in rec.rows_hit,
        }
        for name, attr, i, rule in config_rows()
    ]
    return rec.reports, rows, rec.launches


# --------------------------------------------------------------------------- GELU / erf probe
_GELU_PROBE = """
import triton
import triton.language as tl

from bcrn_fast.kernels import convnext


@triton.jit
def gelu_probe(x_ptr, y_ptr, MODE: tl.constexpr, BLOCK: tl.constexpr):
    # MODE 0: copy (the baseline); 1: libdevice exact-erf GELU 0.5·x·(1 + erf(x/√2)); 2: kernels' gelu_fast
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs)
    if MODE == 1:
        x = 0.5 * x * (1.0 + tl.erf(x * 0.7071067811865476))
    if MODE == 2:
        x = convnext.gelu_fast(x)
    tl.store(y_ptr + offs, x)
"""
GELU_VARIANTS = {1: "libdevice tl.erf", 2: "gelu_fast (kernels/convnext.py)"}
GELU_BLOCK, GELU_WARPS = 1024, 4  # 8 fp32 elements per thread


def gelu_instructions(archs: tuple[int, ...]) -> list[dict]:
    """SASS instructions per GELU element: a 1024-element fp32 copy kernel with and without the GELU, compiled
    for ``archs``; (GELU kernel - copy kernel) / elements per thread, per class. Straight-line code: static =
    executed (any branch inside erf would count both sides)."""
    import importlib.util

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bcrn_gelu_probe.py")
        with open(path, "w") as f:
            f.write(_GELU_PROBE)
        spec = importlib.util.spec_from_file_location("bcrn_gelu_probe", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        x = torch.zeros(GELU_BLOCK)
        with recording(archs) as rec:
            rec.phase = "gelu probe"  # logged, so disassembled
            for mode in (0, *GELU_VARIANTS):
                if mode == 2 and not hasattr(module.convnext, "gelu_fast"):
                    continue
                module.gelu_probe[(1,)](x, x, MODE=mode, BLOCK=GELU_BLOCK, num_warps=GELU_WARPS)
    per_thread = GELU_BLOCK / (32 * GELU_WARPS)
    base = {r.arch: r.sass for r in rec.reports if "MODE=0" in r.config}
    rows = []
    for r in rec.reports:
        mode = int(re.search(r"MODE=(\d)", r.config).group(1))
        if mode:
            rows.append(
                {
                    "arch": r.arch,
                    "variant": GELU_VARIANTS[mode],
                    "per_element": {k: (v - base[r.arch][k]) / per_thread for k, v in r.sass.items()},
                    "regs": r.regs,
                }
            )
    return rows


# --------------------------------------------------------------------------- instruction tables
PREDICTED_GPUS = ("H100 SXM", "H200")  # costs.GPU_PEAKS entries the per-launch floors are summed for
INSTRUCTION_COLUMNS = ("tensor", "ffma", "fmul", "fadd", "fp_other", "mufu", "int", "ldg", "stg", "shared", "total")


def forward_totals(runs: list[dict]) -> list[dict]:
    """Per (Triton, arch, forward, kernel) and per (Triton, arch, forward) as kernel ``all``: launches, programs,
    warp instructions per class (per-program counts x programs), MMA FLOPs, DRAM bytes, unmatched-loop launches."""
    from bcrn_fast.benchmarking import costs

    gpus = [costs.GPU_PEAKS[name] for name in PREDICTED_GPUS]
    groups: dict[tuple, dict] = {}
    for run in runs:
        for launch in run.get("launches", []):
            predicted = {pk.name: costs.launch_costs([launch], pk)[0].predicted_us for pk in gpus}
            for kernel in (launch["kernel"], "all"):
                key = (run["triton"], launch["arch"], launch["phase"], kernel)
                g = groups.setdefault(
                    key,
                    {
                        "triton": key[0],
                        "arch": key[1],
                        "phase": key[2],
                        "kernel": kernel,
                        "launches": 0,
                        "programs": 0,
                        "counts": dict.fromkeys((*SASS_CLASSES, "total"), 0.0),
                        "mma_flops": 0.0,
                        "bytes": 0,
                        "unmatched": 0,
                        "spilling": 0,
                        "predicted_us": dict.fromkeys(PREDICTED_GPUS, 0.0),
                    },
                )
                for name, us in predicted.items():
                    g["predicted_us"][name] += us
                g["launches"] += 1
                g["programs"] += launch["programs"]
                for c, v in launch["per_program"].items():
                    g["counts"][c] += v * launch["programs"]
                g["mma_flops"] += launch["mma_flops"] * launch["programs"]
                g["bytes"] += launch["bytes"]
                g["unmatched"] += not launch["loops_matched"]
                report = run["reports"][launch["report"]] if "reports" in run else {}
                g["spilling"] += bool(report.get("stack") or report.get("local"))
    order = {"all": "~"}  # the sum row last within its group
    return sorted(
        groups.values(), key=lambda g: (g["triton"], g["phase"], g["arch"], order.get(g["kernel"], g["kernel"]))
    )


def format_forward_totals(totals: list[dict]) -> str:
    """Markdown: warp instructions (millions) per class per kernel per forward."""
    lines = [
        "| Triton | forward | arch | kernel | launches | programs | "
        + " | ".join(f"{c} M" for c in INSTRUCTION_COLUMNS)
        + " | MMA GFLOP | DRAM MB | spilling launches | "
        + " | ".join(f"{name} floor µs" for name in PREDICTED_GPUS)
        + " |",
        "| --- | --- | --- | --- | ---: | ---: | "
        + " | ".join("---:" for _ in (*INSTRUCTION_COLUMNS, *PREDICTED_GPUS))
        + " | ---: | ---: | ---: |",
    ]
    for g in totals:
        bold = "**" if g["kernel"] == "all" else ""
        cells = " | ".join(f"{bold}{g['counts'][c] / 1e6:.2f}{bold}" for c in INSTRUCTION_COLUMNS)
        flag = f" ({g['unmatched']} unmatched)" if g["unmatched"] else ""
        lines.append(
            f"| {g['triton']} | {g['phase']} | sm_{g['arch']} | {bold}{g['kernel']}{bold}{flag} | {g['launches']} | "
            f"{g['programs']} | {cells} | {g['mma_flops'] / 1e9:.1f} | {g['bytes'] / 1e6:.1f} | "
            f"{g.get('spilling', '-')} | "
            + " | ".join(f"{g['predicted_us'][name]:.1f}" for name in PREDICTED_GPUS)
            + " |"
        )
    return "\n".join(lines)


def format_before_after(before: list[dict], after: list[dict], phase: str) -> str:
    """Markdown: per (Triton, arch, kernel) of forward ``phase``, total / tensor / FFMA / MUFU warp instructions
    and MMA GFLOP before and after, with the after/before ratio of the totals."""
    index = {(g["triton"], g["arch"], g["kernel"]): g for g in before if g["phase"] == phase}
    lines = [
        "| Triton | arch | kernel | total M before | total M after | after/before | tensor M | FFMA M | MUFU M | "
        "MMA GFLOP | launches | H200 floor µs |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    keys = [(g["triton"], g["arch"], g["kernel"]) for g in after if g["phase"] == phase]
    pairs = {k[:2] for k in keys}  # (Triton, arch) the after run has: only those are compared
    keys += [k for k in index if k not in keys and k[:2] in pairs]
    after_index = {(g["triton"], g["arch"], g["kernel"]): g for g in after if g["phase"] == phase}
    for key in sorted(keys, key=lambda k: (k[0], k[1], k[2] == "all", k[2])):
        b, a = index.get(key), after_index.get(key)

        def pair(g: dict | None, g2: dict | None, c: str) -> str:
            x = f"{g['counts'][c] / 1e6:.1f}" if g else "-"
            y = f"{g2['counts'][c] / 1e6:.1f}" if g2 else "-"
            return f"{x} → {y}"

        ratio = f"{a['counts']['total'] / b['counts']['total']:.2f}" if a and b and b["counts"]["total"] else "-"
        flops = f"{b['mma_flops'] / 1e9 if b else 0:.1f} → {a['mma_flops'] / 1e9 if a else 0:.1f}"
        bold = "**" if key[2] == "all" else ""
        lines.append(
            f"| {key[0]} | sm_{key[1]} | {bold}{key[2]}{bold} | {b['counts']['total'] / 1e6 if b else 0:.1f} | "
            f"{a['counts']['total'] / 1e6 if a else 0:.1f} | {bold}{ratio}{bold} | {pair(b, a, 'tensor')} | "
            f"{pair(b, a, 'ffma')} | {pair(b, a, 'mufu')} | {flops} | "
            f"{b['launches'] if b else 0} → {a['launches'] if a else 0} | {_h200(b)} → {_h200(a)} |"
        )
    return "\n".join(lines)


def _h200(g: dict | None) -> str:
    """The summed per-launch H200 floor of a :func:`forward_totals` row (older files lack it: "-")."""
    us = (g or {}).get("predicted_us", {}).get("H200")
    return "-" if us is None else f"{us:.0f}"


GELUS_PER_PIXEL = 6 * 256 + 64  # x4 forward: 6 ConvNeXt blocks x 256 hidden channels + conv2's 64 outputs


def format_gelu(runs: list[dict]) -> str:
    """Markdown: SASS instructions per GELU element per variant, Triton and arch, and per LR pixel."""
    lines = [
        "| Triton | arch | GELU | instructions / element | FFMA | FMUL+FADD | MUFU | other | "
        f"per LR pixel (x{GELUS_PER_PIXEL}) |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in runs:
        for g in sorted(run.get("gelu", []), key=lambda g: (g["arch"], g["variant"])):
            e = g["per_element"]
            other = e["total"] - e["ffma"] - e["fmul"] - e["fadd"] - e["mufu"]
            lines.append(
                f"| {run['triton']} | sm_{g['arch']} | {g['variant']} | **{e['total']:.2f}** | {e['ffma']:.2f} | "
                f"{e['fmul'] + e['fadd']:.2f} | {e['mufu']:.2f} | {other:.2f} | {e['total'] * GELUS_PER_PIXEL:,.0f} |"
            )
    return "\n".join(lines)


def save_totals(runs: list[dict], path: str, note: str = "") -> None:
    """A small JSON of :func:`forward_totals` and the GELU rows (the "before" of a before/after comparison)."""
    doc = {
        "note": note,
        "runs": [{k: run.get(k) for k in ("triton", "torch", "archs", "date", "commit")} for run in runs],
        "totals": forward_totals(runs),
        "gelu": [dict(g, triton=run["triton"]) for run in runs for g in run.get("gelu", [])],
    }
    _write_atomic(path, json.dumps(doc, indent=0))


def failures(reports: list[KernelReport]) -> list[KernelReport]:
    """Configurations that spill / use local memory, run a tensor-core GEMM without mma/wgmma, or exceed
    the arch's shared memory per block."""
    return [r for r in reports if r.spills or r.smem_over or (r.has_dot and not r.ieee_dot and not r.mma)]


def format_report(reports: list[KernelReport]) -> str:
    """One markdown row per (kernel, arch, dtypes, config); specialisations that differ
    only in divisibility hints are merged, showing the worst registers/stack/local/shared."""
    groups: dict[tuple, list[KernelReport]] = {}
    for r in reports:
        groups.setdefault((r.kernel, r.arch, r.dtypes, r.config), []).append(r)
    lines = [
        "| kernel | arch | dtypes | config | variants | regs | stack | local | static smem | dyn smem | dot | mma |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for (kernel, arch, dtypes, config), rs in sorted(groups.items()):
        dot = "ieee-fma" if all(r.ieee_dot for r in rs) else ("yes" if rs[0].has_dot else "-")
        mma = "yes" if all(r.mma for r in rs) else "no"
        lines.append(
            f"| {kernel} | sm_{arch} | {dtypes} | {config} | {len(rs)} | {max(r.regs for r in rs)} | "
            f"{max(r.stack for r in rs)} | {max(r.local for r in rs)} | {max(r.shared for r in rs)} | "
            f"{max(r.dyn_shared for r in rs)} | {dot} | {mma} |"
        )
    return "\n".join(lines)


def format_summary(runs: list[dict]) -> str:
    """Per (Triton version, arch, kernel): configurations, failing ones, worst registers and dynamic shared memory."""
    lines = [
        "| Triton | arch | kernel | configs | failing | max regs | max dyn smem (B) | tensor-core GEMMs with mma |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for run in runs:
        reports = [KernelReport(**r) for r in run["reports"]]
        for arch in sorted({r.arch for r in reports}):
            for kernel in sorted({r.kernel for r in reports}):
                rs = [r for r in reports if r.arch == arch and r.kernel == kernel]
                if not rs:
                    continue
                tc = [r for r in rs if r.has_dot and not r.ieee_dot]
                mma = f"{sum(r.mma for r in tc)}/{len(tc)}" if tc else "-"
                lines.append(
                    f"| {run['triton']} | sm_{arch} | {kernel} | {len(rs)} | {len(failures(rs))} | "
                    f"{max(r.regs for r in rs)} | {max(r.dyn_shared for r in rs)} | {mma} |"
                )
    return "\n".join(lines)


HEADER = """# Ahead-of-time compile report (Triton kernels, {archs})

Regenerate (CPU only, `TRITON_INTERPRET` unset; 8-16 min per Triton version on a loaded 2-core host):

    python -m bcrn_fast.aot --archs 80,86,90 --json /tmp/aot-3.9.json                   # CI's Triton (.venv)
    $REHEARSE_VENV/bin/python -m bcrn_fast.aot --archs 80,86,90 --json /tmp/aot-3.6.json  # the GPU image's 3.6
    python -m bcrn_fast.aot --merge /tmp/aot-3.6.json /tmp/aot-3.9.json --note "..." \\
        --baseline benchmarks/results/aot-instructions-b521655.json --markdown docs/aot-report.md

(`$REHEARSE_VENV`: the venv `benchmarks/gpu_check.sh --rehearse` builds, `~/.cache/bcrn_rehearse/venv-<pin hash>`;
`--forward-only` compiles just the forwards' launches, ~1 min, for the instruction tables alone.)

Generated on a CPU-only machine by `python -m bcrn_fast.aot` (one run per Triton version, merged with
`--merge`); `tests/test_aot.py` re-runs it in CI
and fails on any spill/local memory, a non-IEEE GEMM without `mma`/`wgmma`, or more dynamic shared memory than
the arch allows a block (sm_80 163 KiB, sm_86/sm_89 99 KiB, sm_90 227 KiB). The launchers are driven for every dtype
x precision x tile-size step, plus once with the int64 offset path forced (`WIDE_INDEX=True`, taken for images whose
largest element offset reaches 2^31). `static smem`: the cubin's static SHARED (cuobjdump); `dyn smem`: Triton's
dynamic shared memory per program (`metadata.shared`, what occupancy depends on). `variants` counts specialisations
that differ only in divisibility hints (worst case shown). `ieee-fma`: fp32 IEEE dots, exact FMA loops by design (no
tensor cores).

**Instruction counts** (`bcrn_fast.aot.parse_sass`, `match_loops`, `forward_totals`). Each compiled cubin is
disassembled (`cuobjdump --dump-sass`, Triton's own) and every instruction classed by mnemonic (tensor = HMMA/HGMMA/
IMMA; ffma, fmul, fadd; fp_other = FMNMX/FSETP/FSEL/HADD2 ...; mufu; int = IMAD/IADD3/LOP3/ISETP/MOV ...; ldg =
LDG/LDGSTS (cp.async)/TMA loads; stg; shared = LDS/STS/LDSM/STSM; the rest: cvt, uniform, const, warp, atom, ctrl,
other). Loops are the SASS back-edges (a branch to an earlier address; nested by address containment). Their trip
counts come from the kernel's TTIR `scf.for` bounds, evaluated with the recorded launch's argument values and
constexprs (program ids taken as 0), and are matched to the SASS loops by nesting shape in program order (if the
shapes differ, constant-trip TTIR loops are taken as unrolled and dropped; a launch whose loops still do not match
is flagged "unmatched" and its loop bodies counted once). Per-program counts are **warp instructions** (what ncu's
`smsp__inst_executed` counts): each SASS instruction x the product of its enclosing loops' trip counts x num_warps.
Per forward: per-program counts x programs (the launch's grid), summed over the launches of one `BCRNFused` x4 fp16
forward (batch 1). MMA FLOPs come from the SASS MMA shapes (HMMA m16n8k16 = 4096 FLOPs per warp issue, HGMMA
64xNx16 per warpgroup, a quarter per warp issue) and agree with the TTIR `tt.dot` shapes x trips. DRAM MB: every
distinct tensor argument the kernel uses, moved once. Limits: predicated and masked instructions count as issued
(as ncu counts them); both sides of a forward branch are counted (an upper bound for guarded code); loops inside an
`scf.if` whose condition depends on an atomic's result (the CCA merges, run by the last program of a group or image
only) are given 0 trips, and the SASS after the first predicated `EXIT` that follows a value-returning atomic
(`ATOMG`: the programs the atomic did not elect leave there) counts 0 per program (had ptxas branched around such a
region instead, its straight-line code would count in every program); subroutines reached by `CALL` (the IEEE
division slow path) are not counted; a pipelined loop's peeled prologue counts once, its loop body the TTIR trip
count (not trip - stages + 1); ptxas unrolling of a runtime-trip loop would show as unmatched.
"""


def format_document(runs: list[dict], baseline: dict | None = None) -> str:
    """The whole markdown report for one or more runs (each: triton, archs, quick, wall_s, date, reports, and
    optionally launches and gelu); ``baseline``: a :func:`save_totals` file for the before/after table."""
    archs = sorted({a for run in runs for a in run["archs"]})
    parts = [HEADER.format(archs=", ".join(f"sm_{a}" for a in archs)), "## Summary", ""]
    for run in runs:
        reports = [KernelReport(**r) for r in run["reports"]]
        parts.append(
            f"- Triton {run['triton']} ({run['date']}{', ' + run['commit'][:7] if run.get('commit') else ''}): "
            f"{len(reports)} kernel configurations compiled for "
            f"{', '.join(f'sm_{a}' for a in run['archs'])}{' (--quick)' if run.get('quick') else ''}, "
            f"{len(failures(reports))} failing; wall time {run['wall_s']:.0f} s."
        )
    parts += ["", format_summary(runs), ""]
    totals = forward_totals(runs)
    if totals:
        phases = sorted({g["phase"] for g in totals}, key=lambda p: int(p.split()[-1].split("x")[0]))
        big = phases[-1]
        if baseline:
            commits = ", ".join(sorted({(r.get("commit") or "?")[:7] for r in baseline.get("runs", [])}))
            parts += [
                f"## Before / after: instructions per forward, {big}",
                "",
                f"Before: `{commits}` ({baseline.get('note', '')}); after: this run. Warp instructions (millions) "
                "per forward, per kernel and in sum; H200 floor: the summed per-launch floors (next sections; an H200"
                " runs the sm_90 code, so only the sm_90 rows are its prediction).",
                "",
                format_before_after(baseline["totals"], totals, big),
                "",
            ]
        parts += [
            "## Instructions per forward (SASS x trip counts x programs)",
            "",
            "Warp instructions in millions per x4 fp16 forward (batch 1), by class; `all` is the sum over kernels."
            " Floor µs: the per-launch floors of `costs.launch_costs` (largest of memory, MMA, issue, MUFU time),"
            " summed.",
            "",
            format_forward_totals(totals),
            "",
        ]
    if any(run.get("gelu") for run in runs):
        parts += [
            "## GELU: SASS instructions per element",
            "",
            f"A {GELU_BLOCK}-element fp32 kernel on {GELU_WARPS} warps ({GELU_BLOCK // (32 * GELU_WARPS)} elements per"
            " thread) with and without the GELU; the difference per element, by class (`bcrn_fast.aot."
            f"gelu_instructions`). Per LR pixel: x {GELUS_PER_PIXEL} GELUs of a x4 forward (6 ConvNeXt x 256 hidden"
            " + conv2's 64), if every one used that variant.",
            "",
            format_gelu(runs),
            "",
        ]
    launch_runs = [run for run in runs if run.get("launches")]
    if launch_runs:
        from bcrn_fast.benchmarking import costs

        peaks = [costs.GPU_PEAKS["H100 SXM"], costs.GPU_PEAKS["H200"]]
        for run in launch_runs:
            arch = 90 if 90 in run["archs"] else max(run["archs"])
            phase = max({lr["phase"] for lr in run["launches"]}, key=lambda p: int(p.split()[-1].split("x")[0]))
            launches = [lr for lr in run["launches"] if lr["arch"] == arch and lr["phase"] == phase]
            parts += [
                f"## Predicted cost per launch: {phase}, sm_{arch}, Triton {run['triton']}",
                "",
                "`bcrn_fast.benchmarking.costs.launch_costs`: each launch's floors on H100 SXM (3.35 TB/s) and H200"
                " (4.8 TB/s), both 989 TFLOP/s dense fp16 and 67 TFLOP/s fp32 (datasheets; see costs.py): memory ="
                " DRAM bytes / HBM bandwidth, mma = MMA FLOPs / tensor peak, issue = warp instructions / (fp32 peak"
                " / 64), mufu = MUFU warp instructions / (1/8 of that); predicted = the largest (no overlap"
                " credit, no latency or tail: a floor to hold a profile against).",
                "",
                costs.format_launch_costs(launches, peaks),
                "",
            ]
    for run in runs:
        parts += [f"## Triton {run['triton']}", "", format_report([KernelReport(**r) for r in run["reports"]]), ""]
    return "\n".join(parts)


def _parse_archs(text: str) -> tuple[int, ...]:
    try:
        archs = tuple(int(a.strip().removeprefix("sm_")) for a in text.split(",") if a.strip())
    except ValueError:
        raise SystemExit(f"--archs: expected comma-separated SM versions like 80,86,89,90, got {text!r}") from None
    if not archs or any(a < 70 for a in archs):
        raise SystemExit(f"--archs: expected SM versions >= 70 (e.g. 80,86,89,90), got {text!r}")
    return archs


def _write_atomic(path: str, text: str) -> None:
    """Write via a temporary file, so an interrupted run never leaves half a report."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _parse_shapes(text: str) -> tuple[tuple[int, int], ...]:
    """``320x180,960x540`` (W x H) as ((H, W), ...); ``none``: ()."""
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        return tuple((int(h), int(w)) for w, h in (part.strip().split("x") for part in text.split(",")))
    except ValueError:
        raise SystemExit(f"--forward: expected WxH sizes like 320x180,960x540 or none, got {text!r}") from None


def _git_commit() -> str | None:
    if os.environ.get("BCRN_GIT_COMMIT"):
        return os.environ["BCRN_GIT_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "-C", os.path.dirname(os.path.abspath(__file__)), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bcrn_fast.aot", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--archs",
        "--arch",
        dest="archs",
        default=",".join(map(str, ARCHS)),
        help=f"comma-separated SM versions (default {','.join(map(str, ARCHS))})",
    )
    parser.add_argument("--quick", action="store_true", help=f"drive {len(QUICK_SHAPES)} shapes, not {len(AOT_SHAPES)}")
    parser.add_argument(
        "--forward",
        default=",".join(f"{w}x{h}" for h, w in FORWARD_SHAPES),
        help="LR sizes WxH of the x4 fp16 forwards whose launches are counted (default %(default)s; none: skip)",
    )
    parser.add_argument(
        "--forward-only",
        action="store_true",
        help="compile only what the --forward forwards launch (instruction tables; no config-row coverage check)",
    )
    parser.add_argument("--json", help="write the run (Triton version, wall time, per-kernel rows) as JSON here")
    parser.add_argument("--markdown", help="write the markdown report here")
    parser.add_argument("--merge", nargs="+", metavar="JSON", help="merge earlier --json runs instead of compiling")
    parser.add_argument("--note", help="with --merge: a paragraph placed above the summary (e.g. run times)")
    parser.add_argument("--baseline", metavar="JSON", help="a --save-totals file: adds the before/after table")
    parser.add_argument(
        "--save-totals", metavar="JSON", help="write the per-forward instruction totals and GELU rows (small JSON)"
    )
    args = parser.parse_args(argv)
    baseline = None
    if args.baseline:
        with open(args.baseline) as f:
            baseline = json.load(f)
    if args.merge:
        runs = []
        for path in args.merge:
            with open(path) as f:
                runs.append(json.load(f))
        doc = format_document(runs, baseline)
        if args.note:
            doc = doc.replace("\n## Summary\n", f"\n{args.note}\n\n## Summary\n", 1)
        if args.markdown:
            _write_atomic(args.markdown, doc)
        else:
            print(doc)
        if args.save_totals:
            save_totals(runs, args.save_totals, args.note or "")
        return 1 if any(failures([KernelReport(**r) for r in run["reports"]]) for run in runs) else 0

    archs = _parse_archs(args.archs)
    forward_shapes = _parse_shapes(args.forward)
    start = time.monotonic()
    reports, rows, launches = compile_all(
        archs, quick=args.quick, progress=True, forward_shapes=forward_shapes, forward_only=args.forward_only
    )
    gelu = gelu_instructions(archs)
    run = {
        "triton": _triton_version(),
        "torch": torch.__version__,
        "commit": _git_commit(),
        "archs": list(archs),
        "quick": args.quick,
        "forward_only": args.forward_only,
        "wall_s": round(time.monotonic() - start, 1),
        "date": time.strftime("%Y-%m-%d"),
        "reports": [asdict(r) for r in reports],
        "rows": rows,
        "launches": launches,
        "gelu": gelu,
    }
    print(format_report(reports))
    if args.markdown:
        _write_atomic(args.markdown, format_document([run], baseline))
    if args.json:
        _write_atomic(args.json, json.dumps(run, indent=1))
    if args.save_totals:
        save_totals([run], args.save_totals, args.note or "")
    bad = failures(reports)
    for r in bad:
        print(
            f"FAIL {r.kernel} sm_{r.arch} {r.dtypes} {r.config}: stack={r.stack} local={r.local} mma={r.mma} "
            f"dyn_shared={r.dyn_shared} (limit {SMEM_LIMIT.get(r.arch, 101376)})",
            file=sys.stderr,
        )
    missed = [] if args.forward_only else [r for r in rows if not r["compiled"]]
    for r in missed:
        print(
            f"FAIL kernels/{r['table']}.py {r.get('name', 'CONFIGS')}[{r['row']}] {r['when']}: never compiled",
            file=sys.stderr,
        )
    print(
        f"{len(reports)} kernel configurations compiled with Triton {run['triton']} for "
        f"{','.join(map(str, archs))} in {run['wall_s']:.0f} s, {len(bad)} failing; "
        f"{sum(r['compiled'] for r in rows)}/{len(rows)} config-table rows compiled"
        f"{' (--forward-only: not checked)' if args.forward_only else ''}",
        file=sys.stderr,
    )
    return 1 if bad or missed else 0


if __name__ == "__main__":
    sys.exit(main())
