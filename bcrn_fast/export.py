"""ONNX export of the reference BCRN, verified on ONNX Runtime (``bcrn-fast export``).

What is exported is the reference :class:`bcrn_fast.model.BCRN` (plain Conv, GELU, mean/std,
max-pool, bilinear resize and pixel shuffle, all standard ONNX), never the fused model: ONNX
Runtime and TensorRT do their own fusion, and the Triton/CUDA kernels would only be opaque custom
ops there. A fused model passed in is exported through a reference BCRN holding the same weights.

The graph has dynamic batch, height and width (input ``input`` ``[N, 3, H, W]``, output ``output``
``[N, 3, s*H, s*W]``, float in [0, 1] in and unclamped out, like the PyTorch model). H and W must
be at least 15 (ESA's stride-2 conv and 7x7/3 max-pool); the file's ``metadata_props`` say so
(``min_size``), together with ``scale``, ``in_channels``/``out_channels``, the value range, the
source weights (name and SHA-256) and the exporter.

Exporter choice (measured with torch 2.13, onnx 1.23, onnxruntime 1.32, onnxscript 0.7 on this
model; natural Set5 crops 37x29, 2x50x61 and 15x15, none of them the export size):

- TorchScript exporter (``dynamo=False``): opsets 11 to 21 all export, pass ``onnx.checker``
  (full check) and match PyTorch to 4e-7..8e-7 relative in fp32 (4e-4..7e-4 in fp16); an export
  takes 1.5-3 s. The dynamic sizes come out right: the resize back to the input size reads
  ``Shape(x)`` in the graph, the validation branches in ``BCRN.forward`` are shape checks that
  trace to constants (they only raise in PyTorch).
- dynamo exporter (``dynamo=True``, torch.export + onnxscript): the same errors in fp32 at opsets
  18 and 23, symbolic output dims (``4*H``) and a smaller graph (271 vs 419 nodes), but an export
  takes 12-22 s (export, decompositions, graph optimisation), and below opset 18 it has no
  implementations: asked for opset 17 it warns, its version converter fails
  (``axes_input_to_attribute``: no constant axes) and it silently returns an opset-18 model.

Both are correct for this network. The default is the **TorchScript exporter at opset 17**: it
reaches the opsets deployers ask for (chaiNNer exports 14-17; TensorRT/NCNN builders read them),
it does not depend on torch.export's shape solver, and it is five to ten times faster, which
matters for :func:`build_ort_session` (the benchmark calls it per model) and for CI. PyTorch marks
it deprecated, so ``exporter="dynamo"`` (``--exporter dynamo``) is offered and verified the same
way; switch the default when the TorchScript path is removed.

Verification runs ONNX Runtime (CPU execution provider) on a natural image -- a crop of a Set5
image from the shared data folder when it is found, else a smooth synthetic image -- at two sizes
that differ from the export size (one of them a batch of two), and compares with PyTorch fp32:
relative Frobenius error at most 1e-4 for an fp32 export, 5e-3 for ``fp16=True``. A natural
image, because on uniform noise the network is ill-conditioned at small sizes: at 17x23 PyTorch's
own fp32 result is 2.5e-4 away from its float64 one, and either exporter's graph 8e-4.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import math
import os
import secrets
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bcrn_fast.model import BCRN, MIN_SIZE
from bcrn_fast.validation import InputError

__all__ = [
    "DEFAULT_OPSET",
    "EXPORTERS",
    "ExportError",
    "ExportReport",
    "add_arguments",
    "build_ort_session",
    "export_onnx",
    "run",
    "verification_image",
]

DEFAULT_OPSET = 17
# Resize with half_pixel coordinates (bilinear, align_corners=False) needs opset 11; the upper ends are
# what torch 2.13's exporters implement (the dynamo exporter starts at 18).
OPSET_RANGE = {"torchscript": (11, 21), "dynamo": (18, 23)}
EXPORTERS = tuple(OPSET_RANGE)
EXPORT_SIZE = (32, 32)  # sample H, W the graph is traced with; verification uses other sizes
VERIFY_SHAPES = ((1, 37, 29), (2, 50, 61))  # (N, H, W): odd sizes, a batch of two
from bcrn_fast.tolerances import TOLERANCE  # noqa: E402 (relative Frobenius error vs PyTorch fp32, shared)

INPUT_NAME, OUTPUT_NAME = "input", "output"
PROG = "bcrn-fast"


class ExportError(RuntimeError):
    """The export or its verification failed (one-line message); nothing is left at the output path."""


@dataclass
class ExportReport:
    """What :func:`export_onnx` wrote and how well ONNX Runtime matched PyTorch."""

    path: Path
    scale: int
    opset: int
    exporter: str
    dtype: str  # "fp32" or "fp16"
    source: str
    size_bytes: int = 0
    checked: bool = False  # onnx.checker passed
    verified: bool = False  # ONNX Runtime matched PyTorch within ``tolerance`` at every shape
    image: str = ""  # what the verification ran on
    tolerance: float = 0.0
    errors: dict[str, float] = field(default_factory=dict)  # "NxHxW" -> relative error

    def summary(self) -> str:
        """One paragraph for the CLI."""
        head = (
            f"wrote {self.path} ({self.size_bytes / 1e6:.2f} MB): BCRN x{self.scale}, {self.dtype}, "
            f"opset {self.opset}, {self.exporter} exporter, dynamic batch/height/width (H, W >= {MIN_SIZE}); "
            "onnx.checker passed"
        )
        if not self.verified:
            return head + "; not verified (--no-verify)"
        errs = ", ".join(f"{k}: {v:.1e}" for k, v in self.errors.items())
        return (
            f"{head}\nverified on ONNX Runtime (CPUExecutionProvider) against PyTorch on {self.image}: "
            f"relative error {errs} (tolerance {self.tolerance:.0e})"
        )


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _require_onnx(need_ort: bool = True) -> None:
    missing = []
    for mod in ("onnx", "onnxruntime") if need_ort else ("onnx",):
        try:
            __import__(mod)
        except ImportError:
            missing.append(mod)
    if missing:
        raise ExportError(f"ONNX export needs {' and '.join(missing)}: pip install 'bcrn_fast[onnx]'")


def _check_opset(opset: int, exporter: str) -> None:
    if exporter not in OPSET_RANGE:
        raise InputError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    lo, hi = OPSET_RANGE[exporter]
    if not isinstance(opset, int) or isinstance(opset, bool) or not lo <= opset <= hi:
        raise InputError(f"ONNX opset {opset!r} is not supported by the {exporter} exporter: expected {lo}..{hi}")


def _reference_model(model: nn.Module | str | os.PathLike[str]) -> tuple[BCRN, str, str]:
    """``(reference BCRN in fp32 on the CPU, eval mode; source name; source sha256)``."""
    if isinstance(model, (str, os.PathLike)):
        from bcrn_fast.checkpoint import load_checkpoint

        path = Path(model)
        ref = load_checkpoint(path)  # FileNotFoundError / CheckpointError: one line
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        return ref, path.name, digest
    if not isinstance(model, nn.Module):
        raise InputError(f"expected a BCRN nn.Module or a checkpoint path, got {type(model).__name__}")
    sd = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    scale = getattr(model, "scale", None)
    if scale is None:
        from bcrn_fast.checkpoint import infer_scale

        scale = infer_scale(sd)
    if scale is None:
        raise InputError(f"cannot export {type(model).__name__}: it has no 'scale' and no upsample_block.0.weight")
    ref = BCRN(int(scale))
    try:
        ref.load_state_dict(sd, strict=True)  # a BCRNFused holds the reference's keys
    except RuntimeError as exc:
        raise InputError(
            f"cannot export {type(model).__name__}: its weights are not BCRN's ({_one_line(exc)})"
        ) from None
    digest = hashlib.sha256(b"".join(sd[k].numpy().tobytes() for k in sorted(sd))).hexdigest()
    return ref.eval(), f"in-memory {type(model).__name__}", digest


def _export_to(model: BCRN, f: str | io.BytesIO, opset: int, exporter: str, half: bool) -> None:
    """Trace ``model`` on a sample and write the ONNX graph (dynamic N, H, W) to ``f``."""
    dtype = torch.float16 if half else torch.float32
    m = BCRN(model.scale).to(dtype)
    m.load_state_dict(model.state_dict())
    m.eval()
    sample = torch.rand(1, 3, *EXPORT_SIZE, generator=torch.Generator().manual_seed(0)).to(dtype)
    s = model.scale
    with (
        torch.inference_mode(False),
        torch.no_grad(),
        warnings.catch_warnings(),
        contextlib.redirect_stdout(io.StringIO()),
    ):
        # the TorchScript exporter warns that it is deprecated and that the shape checks in
        # BCRN.forward trace to constants (they are checks only); dynamo prints progress lines
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            from torch.export import Dim

            n, h, w = Dim("batch", min=1), Dim("height", min=MIN_SIZE), Dim("width", min=MIN_SIZE)
            prog = torch.onnx.export(
                m,
                (sample,),
                None,
                dynamo=True,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes={"x": {0: n, 2: h, 3: w}},
                external_data=False,
                verbose=False,
            )
            data = prog.model_proto.SerializeToString()
            if isinstance(f, io.BytesIO):
                f.write(data)
            else:
                Path(f).write_bytes(data)
        else:
            torch.onnx.export(
                m,
                (sample,),
                f,
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={
                    INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
                    OUTPUT_NAME: {0: "batch", 2: f"height_x{s}", 3: f"width_x{s}"},
                },
                do_constant_folding=True,
            )


def _add_metadata(proto: Any, meta: dict[str, str]) -> None:
    del proto.metadata_props[:]
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    proto.producer_name = "bcrn_fast"
    proto.doc_string = (
        f"BCRN x{meta['scale']} super-resolution: input [N, 3, H, W] RGB float in [0, 1], H, W >= {MIN_SIZE}; "
        f"output [N, 3, {meta['scale']}H, {meta['scale']}W], not clamped."
    )


def verification_image(data_dir: Path | None = None) -> tuple[torch.Tensor, str]:
    """``([1, 3, H, W] float32 natural image, description)`` for the ONNX Runtime check.

    The first Set5 HR image (sorted by name) of ``data_dir`` (default
    :func:`bcrn_fast.evaluate.default_data_dir`) when it is there, else a smooth synthetic
    image (sums of low-frequency sinusoids per channel, like a natural image's spectrum).
    """
    from bcrn_fast.evaluate import default_data_dir

    data_dir = data_dir if data_dir is not None else default_data_dir()
    if data_dir is not None:
        from bcrn_fast.imageio import find_images, read_image

        hr = Path(data_dir) / "Set5" / "HR"
        files = find_images(hr) if hr.is_dir() else []
        if files:
            x, _ = read_image(files[0])
            return x, f"Set5 {files[0].name}"
    h, w = 96, 96
    yy = torch.linspace(0, 1, h).view(h, 1)
    xx = torch.linspace(0, 1, w).view(1, w)
    chans = []
    for c in range(3):
        v = 0.5 + 0.2 * torch.sin(2 * math.pi * (1.3 + c) * xx + 0.7 * c) * torch.cos(2 * math.pi * 0.8 * yy)
        v = v + 0.1 * torch.sin(2 * math.pi * (2.1 * xx + 1.7 * yy + 0.3 * c))
        chans.append(v)
    return torch.stack(chans).unsqueeze(0).clamp(0, 1), "a smooth synthetic 96x96 image"


def _crops(image: torch.Tensor, shapes: Sequence[tuple[int, int, int]]) -> list[torch.Tensor]:
    """Crops of ``image`` of each (N, H, W); the N items are different windows of the image."""
    _, _, ih, iw = image.shape
    out = []
    for n, h, w in shapes:
        if h > ih or w > iw:
            raise InputError(f"verification image is {iw}x{ih}, smaller than the {w}x{h} crop")
        items = []
        for i in range(n):
            top, left = (i * 7) % (ih - h + 1), (i * 11) % (iw - w + 1)
            items.append(image[:, :, top : top + h, left : left + w])
        out.append(torch.cat(items).contiguous())
    return out


def _rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    out64, ref64 = out.double(), ref.double()
    if not torch.isfinite(out64).all():
        return float("inf")
    return float((out64 - ref64).norm() / (ref64.norm() or 1.0))


def _verify(data: bytes, ref: BCRN, half: bool, report: ExportReport) -> None:
    import onnxruntime as ort

    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    image, report.image = verification_image()
    report.tolerance = TOLERANCE["fp16" if half else "fp32"]
    for x in _crops(image, VERIFY_SHAPES):
        with torch.inference_mode():
            want = ref(x)
        feed = x.half().numpy() if half else x.numpy()
        got = torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: feed})[0]).float()
        key = "x".join(str(d) for d in (x.shape[0], x.shape[2], x.shape[3]))
        if tuple(got.shape) != tuple(want.shape):
            raise ExportError(f"ONNX Runtime returned shape {tuple(got.shape)} for {key}, PyTorch {tuple(want.shape)}")
        report.errors[key] = _rel_error(got, want)
    bad = {k: v for k, v in report.errors.items() if not v <= report.tolerance}
    if bad:
        worst = ", ".join(f"{k}: {v:.2e}" for k, v in bad.items())
        raise ExportError(
            f"ONNX Runtime does not match PyTorch: relative error {worst} > {report.tolerance:.0e}; nothing written"
        )
    report.verified = True


def export_onnx(
    model: nn.Module | str | os.PathLike[str],
    path: str | os.PathLike[str],
    opset: int = DEFAULT_OPSET,
    fp16: bool = False,
    verify: bool = True,
    *,
    exporter: str = "torchscript",
) -> ExportReport:
    """Export BCRN (a model or a checkpoint path) to ``path`` as ONNX and return an :class:`ExportReport`.

    The graph has dynamic batch/height/width, ``metadata_props`` (``scale``, ``min_size``,
    ``in_channels``, ``out_channels``, ``input_range``, ``source_weights``, ``source_sha256``,
    ``exporter``, ``dtype``) and passes ``onnx.checker``. With ``verify`` ONNX Runtime must match
    PyTorch (see the module docstring) before the file appears: it is written to a hidden temporary
    file beside ``path`` and renamed onto it only when everything passed, so a failure leaves
    ``path`` as it was. Raises :class:`InputError` (bad opset or exporter), ``FileNotFoundError`` /
    :class:`bcrn_fast.checkpoint.CheckpointError` (bad checkpoint) and :class:`ExportError`.
    """
    _check_opset(opset, exporter)
    _require_onnx(need_ort=verify)
    import onnx

    ref, source, digest = _reference_model(model)
    dest = Path(path)
    if dest.is_dir():
        raise InputError(f"{dest} is a folder; expected an output file such as model.onnx")
    report = ExportReport(dest, ref.scale, opset, exporter, "fp16" if fp16 else "fp32", source)
    buf = io.BytesIO()
    try:
        _export_to(ref, buf, opset, exporter, fp16)
    except Exception as exc:  # the exporters raise many types (RuntimeError, torch.onnx errors, ...)
        raise ExportError(f"torch.onnx ({exporter} exporter, opset {opset}) failed: {_one_line(exc)}") from None
    proto = onnx.load_from_string(buf.getvalue())
    got_opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if got_opset != opset:
        raise ExportError(f"the {exporter} exporter produced opset {got_opset} instead of the requested {opset}")
    _add_metadata(
        proto,
        {
            "scale": str(ref.scale),
            "min_size": str(MIN_SIZE),
            "in_channels": "3",
            "out_channels": "3",
            "input_range": "0..1 (RGB float); output not clamped",
            "dtype": report.dtype,
            "source_weights": source,
            "source_sha256": digest,
            "exporter": f"torch {torch.__version__} {exporter}",
        },
    )
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:  # onnx.checker.ValidationError, onnx.shape_inference errors
        raise ExportError(f"onnx.checker rejected the exported graph: {_one_line(exc)}") from None
    report.checked = True
    data = proto.SerializeToString()
    if verify:
        _verify(data, ref, fp16, report)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.stem}.{secrets.token_hex(6)}.tmp{dest.suffix}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    report.size_bytes = len(data)
    return report


def _providers_for(device: torch.device, providers: Sequence[str] | None) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if providers is not None:
        missing = [p for p in providers if p not in available]
        if missing:
            raise InputError(f"ONNX Runtime providers {missing} are not available here (available: {available})")
        return list(providers)
    if device.type == "cuda":
        wanted = ["TensorrtExecutionProvider", "CUDAExecutionProvider"]
        chosen = [p for p in wanted if p in available]
        if not chosen:
            raise InputError(f"the sample is on {device} but ONNX Runtime has no CUDA provider (have {available})")
        return chosen + ["CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def build_ort_session(
    model: nn.Module | str | os.PathLike[str],
    sample: torch.Tensor,
    providers: Sequence[str] | None = None,
    *,
    opset: int = DEFAULT_OPSET,
    exporter: str = "torchscript",
    threads: int | None = None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Export ``model`` to ONNX in memory and return ``f(x) -> model(x)`` run by ONNX Runtime.

    ``sample`` (``[N, 3, H, W]``) sets the dtype (fp32, or fp16 for a half export) and the device:
    on the CPU the CPU execution provider; on CUDA TensorRT and CUDA providers when ONNX Runtime has
    them (``onnxruntime-gpu``), with I/O bound to the tensors' device memory (TensorRT builds an
    engine for each new input shape on first use, which takes a while: warm up per shape, or pass
    ``providers=["CUDAExecutionProvider"]``). ``providers`` overrides the choice; ``threads`` sets
    ORT's intra-op threads (default: ORT's own). The graph is dynamic,
    so ``f`` takes any batch and size >= 15; it returns a new tensor on ``x``'s device. The session
    is not verified here (:func:`export_onnx` is); the benchmark compares its outputs itself.
    """
    if not isinstance(sample, torch.Tensor) or sample.dim() != 4 or sample.shape[1] != 3:
        raise InputError(f"sample: expected a [N, 3, H, W] tensor, got {getattr(sample, 'shape', type(sample))}")
    if sample.dtype not in (torch.float32, torch.float16):
        raise InputError(f"sample: expected float32 or float16, got {sample.dtype}")
    _check_opset(opset, exporter)
    _require_onnx()
    import numpy as np
    import onnxruntime as ort

    ref, _, _ = _reference_model(model)
    half = sample.dtype == torch.float16
    buf = io.BytesIO()
    try:
        _export_to(ref, buf, opset, exporter, half)
    except Exception as exc:
        raise ExportError(f"torch.onnx ({exporter} exporter, opset {opset}) failed: {_one_line(exc)}") from None
    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = int(threads)
    chosen = _providers_for(sample.device, providers)
    session = ort.InferenceSession(buf.getvalue(), sess_options=opts, providers=chosen)
    scale = ref.scale
    dtype = sample.dtype
    np_dtype = np.float16 if half else np.float32

    def run_cpu(x: torch.Tensor) -> torch.Tensor:
        out = session.run([OUTPUT_NAME], {INPUT_NAME: x.detach().to("cpu", dtype).contiguous().numpy()})[0]
        return torch.from_numpy(out).to(x.device)

    def run_cuda(x: torch.Tensor) -> torch.Tensor:
        # bind the input and a preallocated output in device memory: no host round trip
        x = x.detach().to(device=sample.device, dtype=dtype).contiguous()
        n, _, h, w = x.shape
        y = torch.empty(n, 3, scale * h, scale * w, device=x.device, dtype=dtype)
        binding = session.io_binding()
        dev = x.device.index or 0
        binding.bind_input(INPUT_NAME, "cuda", dev, np_dtype, tuple(x.shape), x.data_ptr())
        binding.bind_output(OUTPUT_NAME, "cuda", dev, np_dtype, tuple(y.shape), y.data_ptr())
        torch.cuda.current_stream(x.device).synchronize()
        session.run_with_iobinding(binding)
        return y

    return run_cuda if sample.device.type == "cuda" and chosen[0] != "CPUExecutionProvider" else run_cpu


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``bcrn-fast export``."""
    p.add_argument("--onnx", required=True, metavar="OUT.onnx", help="output .onnx file")
    p.add_argument("--weights", "-w", required=True, help="checkpoint (.pth, .pt or .safetensors)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument("--fp16", action="store_true", help="export a float16 graph (fp16 input and output)")
    p.add_argument(
        "--exporter",
        choices=EXPORTERS,
        default="torchscript",
        help="torch.onnx exporter (default torchscript; see bcrn_fast.export for the measurements)",
    )
    p.add_argument("--no-verify", action="store_true", help="skip the ONNX Runtime check against PyTorch")


def run(args: argparse.Namespace) -> int:
    """Run ``bcrn-fast export``: export, check, verify on ONNX Runtime, then report (exit 0) or fail (exit 2)."""
    try:
        report = export_onnx(
            args.weights,
            args.onnx,
            opset=args.opset,
            fp16=args.fp16,
            verify=not args.no_verify,
            exporter=args.exporter,
        )
    except ExportError as exc:
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0
