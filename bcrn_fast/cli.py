"""Command line: ``bcrn-fast`` / ``python -m bcrn_fast``.

Subcommands:

- ``upscale INPUT... -o OUTDIR --weights W``: super-resolve PNG/JPEG/BMP files
  (or every such file in the given folders) to ``OUTDIR/<stem>_x<S>.png``;
- ``eval --weights W [--hr DIR --lr DIR]``: PSNR/SSIM table by the paper's
  protocol (defaults to the shared Set5 data when it is found);
- ``bench``: time the model (see :mod:`bcrn_fast.bench`).

Every user error (missing or unreadable file, wrong checkpoint, too-small
image, bad flag combination) prints one line ``bcrn-fast: error: ...`` to
stderr and exits with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from bcrn_fast.checkpoint import CheckpointError, infer_scale, load_checkpoint
from bcrn_fast.evaluate import DatasetError, default_data_dir, evaluate, format_table, set5_dirs
from bcrn_fast.imageio import ImageError, find_images, image_size, read_image, write_png_atomic
from bcrn_fast.model import MIN_SIZE, SCALES
from bcrn_fast.ops._common import BackendUnavailable
from bcrn_fast.validation import InputError

__all__ = ["CLIError", "build_parser", "main"]

PROG = "bcrn-fast"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
BACKENDS = ("auto", "triton", "cuda", "torch", "reference")
EXIT_USAGE = 2


class CLIError(Exception):
    """A user error: reported as one ``bcrn-fast: error: ...`` line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """ArgumentParser whose errors become :class:`CLIError` (one line, no usage dump)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise CLIError(message)


def _fused_import_error() -> str | None:
    """``None`` when ``bcrn_fast.fused.BCRNFused`` imports, else the one-line reason it does not."""
    try:
        from bcrn_fast.fused import BCRNFused  # noqa: F401
    except ImportError as exc:
        return " ".join(str(exc).split()) or type(exc).__name__
    return None


def _choose_backend(args: argparse.Namespace) -> tuple[bool, str]:
    """``(fused, backend)`` from ``--fused`` / ``--backend``.

    No flag: on a CUDA device the fused model with backend ``auto``; on the CPU
    (or when ``bcrn_fast.fused`` cannot be imported) the reference BCRN, which
    is the faster of the two there (``bcrn-fast bench``: the fused ``torch``
    backend is the executable spec, not a CPU speed-up). ``--backend reference`` is always the
    reference BCRN; ``--fused``, ``--backend triton`` and ``--backend torch``
    require the fused model.
    """
    backend = args.backend
    if args.fused and backend == "reference":
        raise CLIError("--fused cannot be combined with --backend reference")
    if backend == "reference":
        return False, "reference"
    missing = _fused_import_error()
    if backend is None and not args.fused:
        on_cpu = str(getattr(args, "device", "cpu")).startswith("cpu")
        return (False, "reference") if missing or on_cpu else (True, "auto")
    backend = backend or "auto"
    if missing:
        flag = "--fused" if args.fused else f"--backend {backend}"
        raise CLIError(f"{flag} needs the fused model, but bcrn_fast.fused cannot be imported ({missing})")
    return True, backend


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CLIError(f"unknown device {name!r} (use cpu or cuda)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device cuda was requested but CUDA is not available on this machine")
    return device


def _load_model(args: argparse.Namespace) -> tuple[nn.Module, int, torch.device, torch.dtype]:
    device = _device(args.device)
    dtype = DTYPES[args.dtype]
    fused, backend = _choose_backend(args)
    if fused:
        try:
            model = load_checkpoint(args.weights, args.scale, device=device, dtype=dtype, fused=True, backend=backend)
        except (CheckpointError, FileNotFoundError):
            raise
        except (ValueError, NotImplementedError) as exc:
            raise CLIError(f"cannot build the fused model (backend {backend}): {' '.join(str(exc).split())}") from None
    else:
        model = load_checkpoint(args.weights, args.scale, device=device, dtype=dtype)
    scale = getattr(model, "scale", None) or infer_scale(model.state_dict())
    if scale is None:
        raise CLIError(f"cannot determine the scale of the model loaded from {args.weights}")
    return model, int(scale), device, dtype


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", "-w", required=True, help="checkpoint (.pth, .pt or .safetensors)")
    p.add_argument("--scale", "-s", type=int, choices=SCALES, help="expected scale (default: from the weights)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="fp32", help="compute precision (default fp32)")
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default=None,
        help="fused-kernel backend, or 'reference' for the plain PyTorch BCRN "
        "(default: auto when bcrn_fast.fused is available, else reference)",
    )
    p.add_argument("--fused", action="store_true", help="require the fused model (same as --backend auto)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (bars are shown only on a terminal)")


def build_parser() -> argparse.ArgumentParser:
    """The ``bcrn-fast`` argument parser with its ``upscale``, ``eval`` and ``bench`` subcommands."""
    from bcrn_fast import bench

    parser = _Parser(prog=PROG, description="BCRN super-resolution: upscale images, evaluate, benchmark.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    up = sub.add_parser("upscale", help="super-resolve images", description="Super-resolve PNG/JPEG/BMP images.")
    up.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders of images")
    up.add_argument("-o", "--output", "--outdir", dest="outdir", required=True, help="output folder")
    up.add_argument("--overwrite", action="store_true", help="replace existing outputs (never an input file)")
    _add_model_args(up)

    ev = sub.add_parser(
        "eval", help="PSNR/SSIM on an HR/LR folder pair", description="Evaluate by the paper's protocol."
    )
    ev.add_argument("--hr", help="ground-truth folder (default: Set5/HR of the data dir)")
    ev.add_argument("--lr", help="low-resolution folder (default: Set5/LR_bicubic/X<scale> of the data dir)")
    ev.add_argument("--data-dir", help="reference data folder (default: $BCRN_DATA_DIR or ../shared/data)")
    _add_model_args(ev)

    be = sub.add_parser("bench", help="time the model", description="Time BCRN forward passes.")
    bench.add_arguments(be)
    return parser


def _collect_inputs(items: Sequence[str]) -> list[Path]:
    files: list[Path] = []
    seen: set[Path] = set()
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = find_images(p)
            if not found:
                raise CLIError(f"{p}: folder holds no .png/.jpg/.jpeg/.bmp images")
        elif p.exists():
            found = [p]
        else:
            raise CLIError(f"{p}: no such file or folder")
        for f in found:
            key = f.resolve()
            if key not in seen:
                seen.add(key)
                files.append(f)
    return files


def _plan_outputs(inputs: list[Path], outdir: Path, scale: int, overwrite: bool) -> list[Path]:
    outputs = [outdir / f"{f.stem}_x{scale}.png" for f in inputs]
    by_out: dict[Path, Path] = {}
    input_keys = {f.resolve() for f in inputs}
    for f, out in zip(inputs, outputs, strict=True):
        key = out.resolve()
        if key in by_out:
            raise CLIError(f"{by_out[key]} and {f} would both be written to {out}; rename one of them")
        by_out[key] = f
        if key in input_keys or (out.exists() and any(out.samefile(i) for i in inputs)):
            raise CLIError(f"{out} is an input image; refusing to overwrite it (choose another output folder)")
    existing = [o for o in outputs if o.exists()]
    if existing and not overwrite:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise CLIError(f"{existing[0]}{more} already exists; pass --overwrite to replace")
    for o in existing:
        if not o.is_file():
            raise CLIError(f"{o} exists and is not a file")
    return outputs


def _check_sizes(inputs: list[Path]) -> None:
    for f in inputs:
        w, h = image_size(f)
        if w < MIN_SIZE or h < MIN_SIZE:
            raise CLIError(
                f"{f} is {w}x{h} pixels; ESA needs at least {MIN_SIZE}x{MIN_SIZE} LR pixels "
                f"(pad the image, e.g. reflect-pad, to at least that size)"
            )


def _progress(args: argparse.Namespace) -> bool:
    """Progress bars go to stderr, only when it is a terminal and --no-progress is not given."""
    return not args.no_progress and sys.stderr.isatty()


def _note(message: str) -> None:
    tqdm.write(f"{PROG}: note: {message}", file=sys.stderr)


def _cmd_upscale(args: argparse.Namespace) -> int:
    inputs = _collect_inputs(args.inputs)
    outdir = Path(args.outdir)
    if outdir.exists() and not outdir.is_dir():
        raise CLIError(f"output {outdir} exists and is not a folder")
    _check_sizes(inputs)
    model, scale, device, dtype = _load_model(args)
    outputs = _plan_outputs(inputs, outdir, scale, args.overwrite)
    outdir.mkdir(parents=True, exist_ok=True)
    show = len(inputs) > 1 and _progress(args)
    with torch.inference_mode():
        for f, out in tqdm(list(zip(inputs, outputs, strict=True)), desc="upscale", unit="img", disable=not show):
            x, note = read_image(f)
            if note:
                _note(f"{f}: {note}")
            y = model(x.to(device=device, dtype=dtype))
            write_png_atomic(y, out)
            tqdm.write(str(out), file=sys.stdout)
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    if (args.hr is None) != (args.lr is None):
        raise CLIError("give both --hr and --lr, or neither (to use Set5 from the data dir)")
    model, scale, device, dtype = _load_model(args)
    if args.hr is None:
        data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
        if data_dir is None:
            raise CLIError("no --hr/--lr given and no data dir found (set BCRN_DATA_DIR or pass --data-dir)")
        hr_dir, lr_dir = set5_dirs(data_dir, scale)
    else:
        hr_dir, lr_dir = Path(args.hr), Path(args.lr)
    results = evaluate(model, hr_dir, lr_dir, scale, device=device, dtype=dtype, progress=_progress(args))
    print(f"BCRN x{scale} on {lr_dir} vs {hr_dir} (Y channel, shave {scale})")
    print(format_table(results))
    return 0


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror}"
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``) and return the exit status."""
    try:
        args = build_parser().parse_args(argv)
        if args.command == "upscale":
            return _cmd_upscale(args)
        if args.command == "eval":
            return _cmd_eval(args)
        from bcrn_fast import bench

        return int(bench.run(args) or 0)
    except SystemExit as exc:  # --help and friends
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except (
        BackendUnavailable,
        CLIError,
        CheckpointError,
        ImageError,
        InputError,
        DatasetError,
        OSError,
        argparse.ArgumentTypeError,
    ) as exc:
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
