"""Command line: ``bcrn-fast`` / ``python -m bcrn_fast``.

Subcommands:

- ``upscale INPUT... -o OUTDIR --weights W``: super-resolve PNG/JPEG/BMP images and videos
  (or every such file in the given folders, ``--recursive`` mirroring the tree) to
  ``OUTDIR/<stem>_x<S>.png`` / ``OUTDIR/<stem>_x<S>.mp4`` through the pipeline of
  :mod:`bcrn_fast.pipeline` (naming and skip rules: :mod:`bcrn_fast.jobs`; video: :mod:`bcrn_fast.video`);
- ``eval --weights W [--hr DIR --lr DIR]``: PSNR/SSIM table by the paper's
  protocol (defaults to the shared Set5 data when it is found);
- ``bench``: time the model (see :mod:`bcrn_fast.bench`).

Defaults (``upscale``): ``--dtype auto`` is fp16 storage with fp32 accumulation on CUDA and fp32
on the CPU; in fp16/bf16 an image or video frame whose output is not finite is re-run in fp32
(one note on stderr naming it; the fp32 result is written; if that is not finite either the item
fails like an unreadable file). CUDA fused runs replay CUDA graphs (``--no-cuda-graph`` turns that
off). The device-dependent choices are :func:`resolve_dtype` and :func:`wants_graph`.

Every user error (missing or unreadable file, wrong checkpoint, bad flag
combination) prints one line ``bcrn-fast: error: ...`` to stderr and exits with
status 2, without a traceback. With ``upscale --keep-going`` a bad file is
reported (``bcrn-fast: failed: ...``) and skipped, a summary ends the run, and
the exit status is 1 when anything failed.
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
from bcrn_fast.imageio import ImageError, atomic_output, image_size, read_image_array, write_png
from bcrn_fast.jobs import Job, plan_jobs
from bcrn_fast.model import MIN_SIZE, SCALES
from bcrn_fast.ops.backends import BackendUnavailable
from bcrn_fast.validation import InputError

__all__ = ["CLIError", "build_parser", "main", "resolve_dtype", "wants_graph"]

PROG = "bcrn-fast"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DTYPE_CHOICES = ("auto", *DTYPES)
PRECISIONS = ("ieee", "tf32")
GRAPH_BACKENDS = ("triton", "cuda")  # the fused backends whose forward is capturable
BACKENDS = ("auto", "triton", "cuda", "torch", "reference")
EXIT_USAGE = 2
EXIT_FAILED = 1  # --keep-going: some files failed


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


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """``--dtype`` as a torch dtype: ``auto`` is fp16 on CUDA (fp16 storage, fp32 accumulation; outputs
    checked and re-run in fp32 when not finite) and fp32 elsewhere; fp32/fp16/bf16 are taken as given."""
    if name == "auto":
        return torch.float16 if torch.device(device).type == "cuda" else torch.float32
    if name not in DTYPES:
        raise CLIError(f"--dtype expects one of {', '.join(DTYPE_CHOICES)}, got {name!r}")
    return DTYPES[name]


def wants_graph(
    requested: bool | None,
    device: torch.device,
    backend: str,
    *,
    tile: int | str | None,
    compile: bool,  # noqa: A002
) -> tuple[bool, str | None]:
    """``(use, note)``: whether ``upscale`` replays the model from CUDA graphs (:func:`bcrn_fast.graphed`).

    ``requested`` is ``--cuda-graph`` (True), ``--no-cuda-graph`` (False) or neither (None);
    ``backend`` is the resolved fused backend, or ``"reference"``. Graphs are used on a CUDA device
    with the fused triton/cuda backend, without ``--tile`` (tiles of varying sizes run the eager
    layers) and without ``--compile``: by default, or when asked for. ``note`` is one line when
    ``--cuda-graph`` was asked for but cannot apply (``None`` otherwise: the default stays quiet).
    """
    if requested is False:
        return False, None
    why = None
    if torch.device(device).type != "cuda":
        why = f"CUDA graphs need --device cuda (this run is on {torch.device(device).type})"
    elif backend not in GRAPH_BACKENDS:
        why = f"CUDA graphs are used with the fused triton/cuda backends, not {backend}"
    elif tile is not None:
        why = "--tile runs tile by tile, with shapes that vary"
    elif compile:
        why = "--compile and CUDA graphs are not combined (use one of them)"
    if why is not None:
        return False, (f"--cuda-graph ignored: {why}" if requested else None)
    return True, None


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CLIError(f"unknown device {name!r} (use cpu or cuda)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device cuda was requested but CUDA is not available on this machine")
    return device


def apply_precision(model: nn.Module, precision: str, device: torch.device) -> None:
    """``--precision``: the fp32 dot mode of the fused kernels, and of cuDNN/cuBLAS for the reference on CUDA."""
    if hasattr(model, "set_backend"):  # BCRNFused
        model.set_backend(model.backend, precision)
    elif device.type == "cuda":  # process-wide, as the CLI owns the process
        torch.backends.cudnn.allow_tf32 = precision == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"


def _load_model(
    args: argparse.Namespace, dtype: torch.dtype | None = None
) -> tuple[nn.Module, int, torch.device, torch.dtype]:
    """``(model, scale, device, dtype)`` from the model flags; ``dtype`` overrides ``--dtype``."""
    device = _device(args.device)
    dtype = dtype or resolve_dtype(args.dtype, device)
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
    apply_precision(model, args.precision, device)
    return model, int(scale), device, dtype


def _model_backend(model: nn.Module, device: torch.device) -> str:
    """The concrete fused backend ``model`` runs on ``device``, or ``"reference"`` for the plain BCRN."""
    backend = getattr(model, "backend", None)
    if backend is None:
        return "reference"
    from bcrn_fast.ops.backends import resolve_backend

    return resolve_backend(backend, device)


_DTYPE_HELP = {
    "auto": "storage precision: auto (default) is fp16 on CUDA (fp16 storage, fp32 accumulation; an image "
    "or video frame whose fp16/bf16 output is not finite is re-run in fp32, with a note) and fp32 on the CPU "
    "(with --engine ray: per worker device); fp32 is the accuracy mode",
    "fp32": "storage precision (default fp32, the accuracy mode; auto is fp16 on CUDA, fp32 elsewhere)",
}


def _add_model_args(p: argparse.ArgumentParser, dtype: str = "auto") -> None:
    p.add_argument("--weights", "-w", required=True, help="checkpoint (.pth, .pt or .safetensors)")
    p.add_argument("--scale", "-s", type=int, choices=SCALES, help="expected scale (default: from the weights)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default=dtype, help=_DTYPE_HELP[dtype])
    p.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="ieee",
        help="fp32 dot mode on CUDA: ieee (default, the accuracy mode: IEEE fp32 products) or tf32 "
        "(the fast fp32 mode: TF32 tensor cores, 10-bit mantissa products); fp16/bf16 ignore it",
    )
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

    up = sub.add_parser(
        "upscale", help="super-resolve images and videos", description="Super-resolve images (PNG/JPEG/BMP) and videos."
    )
    _add_upscale_args(up)

    ev = sub.add_parser(
        "eval", help="PSNR/SSIM on an HR/LR folder pair", description="Evaluate by the paper's protocol."
    )
    ev.add_argument("--hr", help="ground-truth folder (default: Set5/HR of the data dir)")
    ev.add_argument("--lr", help="low-resolution folder (default: Set5/LR_bicubic/X<scale> of the data dir)")
    ev.add_argument("--data-dir", help="reference data folder (default: $BCRN_DATA_DIR or ../shared/data)")
    _add_model_args(ev, dtype="fp32")  # eval measures accuracy: fp32 unless asked

    be = sub.add_parser("bench", help="time the model", description="Time BCRN forward passes.")
    bench.add_arguments(be)

    ex = sub.add_parser(
        "export", help="export the network (ONNX)", description="Export BCRN to ONNX and verify it on ONNX Runtime."
    )
    from bcrn_fast import export

    export.add_arguments(ex)
    return parser


def _tile_arg(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"--tile expects a positive number of LR pixels or 'auto', got {text!r}")
    return value


def _gib_arg(text: str) -> int:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"--max-memory expects a positive size in GiB, got {text!r}")
    return int(value * 2**30)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _add_upscale_args(up: argparse.ArgumentParser) -> None:
    from bcrn_fast.video import DEFAULT_CODEC, DEFAULT_CRF, DEFAULT_PRESET

    up.add_argument("inputs", nargs="+", metavar="INPUT", help="image or video files, or folders of them")
    up.add_argument(
        "-o", "--output", "--outdir", dest="outdir", required=True, help="output folder (or file, for one video)"
    )
    exist = up.add_mutually_exclusive_group()
    exist.add_argument("--overwrite", action="store_true", help="replace existing outputs (never an input file)")
    exist.add_argument(
        "--skip-existing", action="store_true", help="leave existing outputs alone and skip their inputs"
    )
    up.add_argument("--recursive", "-r", action="store_true", help="look in subfolders; mirror the tree under -o")
    up.add_argument("--keep-going", action="store_true", help="report and skip bad files; exit 1 if any failed")
    _add_model_args(up)
    perf = up.add_argument_group("pipeline")
    perf.add_argument("--batch", type=_positive_int, help="frames/images per batch (default 1 on the CPU, 4 on CUDA)")
    perf.add_argument("--queue", type=_positive_int, default=8, help="items buffered per stage (default 8)")
    perf.add_argument("--read-workers", type=_positive_int, default=2, help="image-reading threads (default 2)")
    perf.add_argument("--compile", action="store_true", help="torch.compile the model (pays off on long jobs)")
    perf.add_argument(
        "--cuda-graph",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="replay the model from CUDA graphs (bcrn_fast.graphed). Default: on with --device cuda and the "
        "fused triton/cuda backend, without --tile or --compile; each batch shape is captured on its second "
        "batch (one-off sizes run eagerly), two shapes kept. --cuda-graph elsewhere (CPU, reference/torch "
        "backend, --tile, --compile, --engine ray) is ignored with a note",
    )
    perf.add_argument("--tile", type=_tile_arg, help="exact tiled inference with N-pixel tiles, or 'auto'")
    perf.add_argument("--max-memory", type=_gib_arg, metavar="GiB", help="device memory budget for --tile auto")
    vid = up.add_argument_group("video")
    vid.add_argument(
        "--codec", default=DEFAULT_CODEC, help=f"video encoder (default {DEFAULT_CODEC}; ffv1 is lossless)"
    )
    vid.add_argument("--crf", type=int, help=f"quality for libx264/libx265/vp9/av1 (default {DEFAULT_CRF})")
    vid.add_argument("--pix-fmt", help="encoder pixel format (default yuv420p; bgr0, i.e. RGB, for ffv1)")
    vid.add_argument("--preset", default=DEFAULT_PRESET, help=f"libx264/libx265 preset (default {DEFAULT_PRESET})")
    vid.add_argument("--container", help="video output extension, e.g. mkv (default: the input's, or mp4)")
    vid.add_argument("--frames", metavar="A:B", help="only frames A..B-1 of each video")
    ray = up.add_argument_group("scale-out")
    ray.add_argument("--engine", choices=("local", "ray"), default="local", help="local pipeline (default) or Ray Data")
    ray.add_argument("--ray-address", help="Ray cluster address (default: start a local one)")
    ray.add_argument("--gpus-per-worker", type=float, help="GPUs per Ray actor (default 1 on CUDA, 0 on the CPU)")
    ray.add_argument("--workers", type=_positive_int, help="Ray actors (default: one per GPU, or 1 on the CPU)")


def _progress(args: argparse.Namespace) -> bool:
    """Progress bars go to stderr, only when it is a terminal and --no-progress is not given."""
    return not args.no_progress and sys.stderr.isatty()


def _note(message: str) -> None:
    tqdm.write(f"{PROG}: note: {message}", file=sys.stderr)


def _failed(message: str) -> None:
    tqdm.write(f"{PROG}: failed: {message}", file=sys.stderr)


def _check_tiling(args: argparse.Namespace) -> None:
    if args.max_memory is not None and args.tile is None:
        args.tile = "auto"
    if args.tile is not None:
        try:
            from bcrn_fast.tiling import tiled_forward  # noqa: F401
        except ImportError as exc:
            raise CLIError(f"--tile needs bcrn_fast.tiling.tiled_forward, which cannot be imported ({exc})") from None


def _prescan(jobs: list[Job], args: argparse.Namespace, failures: list[str]) -> list[Job]:
    """Check headers (and that PyAV is there for videos) before any work; bad files fail now."""
    from bcrn_fast.video import probe, require_av

    if any(j.kind == "video" for j in jobs):
        require_av()
    elif args.frames is not None:
        raise CLIError("--frames applies to videos, and no input is a video")
    good = []
    for job in jobs:
        try:
            if job.kind == "video":
                probe(job.src)
            else:
                image_size(job.src)
        except (ImageError, InputError) as exc:
            if not args.keep_going:
                raise
            _failed(_one_line(exc))
            failures.append(str(job.src))
            continue
        good.append(job)
    return good


def _checkpoint_scale(args: argparse.Namespace) -> int:
    model = load_checkpoint(args.weights, args.scale)
    scale = getattr(model, "scale", None) or infer_scale(model.state_dict())
    if scale is None:
        raise CLIError(f"cannot determine the scale of the model loaded from {args.weights}")
    return int(scale)


def _run_ray(jobs: list[Job], args: argparse.Namespace) -> int:
    """Hand the planned jobs to :func:`bcrn_fast.distributed.run_upscale` (its exit status is ours)."""
    try:
        from bcrn_fast.distributed import run_upscale
    except ImportError as exc:
        raise CLIError(
            f"--engine ray needs bcrn_fast.distributed.run_upscale, which cannot be imported ({exc})"
        ) from None
    if args.gpus_per_worker is None:  # the workers' device, not this machine's: --device names it
        args.gpus_per_worker = 1.0 if str(args.device).startswith("cuda") else 0.0
    return int(run_upscale(jobs, args) or 0)


def _upscale_images(jobs: list[Job], runner, args: argparse.Namespace, failures: list[str]) -> int:  # noqa: ANN001
    """Images through the pipeline: thread-pool reads, equal sizes batched, PNGs written atomically."""
    from bcrn_fast.pipeline import Item, image_item_data, ordered_map, run_pipeline

    def read(job: Job) -> Item:  # on a pool thread: numpy only (see pipeline.ordered_map)
        try:
            arr, note = read_image_array(job.src)
        except ImageError as exc:
            return Item(job, None, exc)
        if note:
            _note(f"{job.src}: {note}")
        h, w = arr.shape[:2]
        if h < MIN_SIZE or w < MIN_SIZE:
            _note(f"{job.src}: {w}x{h} is below {MIN_SIZE}x{MIN_SIZE}; reflect-padded to run, output cropped back")
        return Item(job, image_item_data(arr))

    done = 0
    bar = tqdm(total=len(jobs), desc="upscale", unit="img", disable=not (len(jobs) > 1 and _progress(args)))

    def write(item: Item, out: torch.Tensor | None) -> None:
        nonlocal done
        job: Job = item.key
        bar.update(1)
        if item.error is not None:
            if not args.keep_going:
                raise item.error
            _failed(_one_line(item.error))
            failures.append(str(job.src))
            return
        try:
            with atomic_output(job.dst) as tmp:
                write_png(out.numpy(), tmp)
        except OSError as exc:  # e.g. a full disk or a read-only folder
            if not args.keep_going:
                raise
            _failed(f"{job.dst}: {_one_line(exc)}")
            failures.append(str(job.src))
            return
        done += 1
        tqdm.write(str(job.dst), file=sys.stdout)

    try:
        run_pipeline(
            ordered_map(read, jobs, workers=args.read_workers),
            runner,
            write,
            batch=args.batch,
            queue_size=args.queue,
            label=lambda job: str(job.src),
            note=_note,
        )
    finally:
        bar.close()
    return done


def _upscale_videos(jobs: list[Job], runner, scale: int, args: argparse.Namespace, failures: list[str]) -> int:  # noqa: ANN001
    from bcrn_fast.video import parse_frames, upscale_video

    frames = parse_frames(args.frames)
    done = 0
    for job in jobs:
        try:
            stats = upscale_video(
                runner,
                job.src,
                job.dst,
                scale,
                codec=args.codec,
                crf=args.crf,
                pix_fmt=args.pix_fmt,
                preset=args.preset,
                frames=frames,
                batch=args.batch,
                queue_size=args.queue,
                progress=_progress(args),
                note=_note,
            )
        except (InputError, ImageError, OSError) as exc:
            if not args.keep_going:
                raise
            _failed(_one_line(exc))
            failures.append(str(job.src))
            continue
        done += 1
        tqdm.write(str(job.dst), file=sys.stdout)
        if _progress(args):
            rate = f"{stats.rate:.2f} frames/s, model busy {stats.busy:.0%}"
            _note(f"{job.src}: {stats.items} frames in {stats.wall:.1f} s ({rate})")
    return done


def _tile_progress(args: argparse.Namespace):  # noqa: ANN202
    """A per-tile bar for tiled images (on a terminal)."""
    if not _progress(args):
        return None

    def make(shape: tuple[int, ...]):  # noqa: ANN202
        bar = tqdm(desc=f"tiles {shape[-1]}x{shape[-2]}", unit="tile", leave=False)

        def update(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()
            if done >= total:
                bar.close()

        return update

    return make


def _fp32_fallback(args: argparse.Namespace, device: torch.device):  # noqa: ANN202
    """The fp32 model for re-running non-finite half outputs: loaded from the checkpoint (the half
    model's weights are rounded) with the same backend and precision, eager (no graph, no compile)."""
    from bcrn_fast.pipeline import prepare_model

    def build() -> nn.Module:
        return prepare_model(_load_model(args, torch.float32)[0], device)

    return build


def _cmd_upscale(args: argparse.Namespace) -> int:
    from bcrn_fast.pipeline import HALF, Runner, prepare_model

    outdir = Path(args.outdir)
    _check_tiling(args)
    if args.engine == "ray":  # the workers load the model; here only its scale (and a valid checkpoint)
        scale = _checkpoint_scale(args)
        if args.cuda_graph:
            _note("--cuda-graph ignored: the Ray workers run the model without graphs")
    else:
        model, scale, device, dtype = _load_model(args)
    suffix = args.container
    if suffix is None and args.codec == "ffv1":
        suffix = ".mkv"  # ffv1 does not go into mp4
    jobs, skipped = plan_jobs(
        args.inputs,
        outdir,
        scale,
        recursive=args.recursive,
        skip_existing=args.skip_existing,
        overwrite=args.overwrite,
        suffix=suffix,
    )
    if outdir.exists() and not outdir.is_dir() and not (len(jobs) == 1 and jobs[0].dst == outdir):
        raise CLIError(f"output {outdir} exists and is not a folder")
    failures: list[str] = []
    jobs = _prescan(jobs, args, failures)
    if args.engine == "ray":
        if skipped:
            _note(f"{len(skipped)} skipped (output exists)")
        code = _run_ray(jobs, args) if jobs else 0
        return code or (EXIT_FAILED if failures else 0)
    if args.batch is None:
        args.batch = 4 if device.type == "cuda" else 1
    use_graph, why = wants_graph(
        args.cuda_graph, device, _model_backend(model, device), tile=args.tile, compile=args.compile
    )
    if why:
        _note(why)
    model = prepare_model(model, device, compile=args.compile, cuda_graph=use_graph)
    runner = Runner(
        model,
        device,
        dtype,
        tile=args.tile,
        max_memory=args.max_memory,
        tile_progress=_tile_progress(args),
        fallback=_fp32_fallback(args, device) if dtype in HALF else None,
    )
    images = [j for j in jobs if j.kind == "image"]
    videos = [j for j in jobs if j.kind == "video"]
    done = _upscale_images(images, runner, args, failures) if images else 0
    done += _upscale_videos(videos, runner, scale, args, failures) if videos else 0
    if skipped or failures or len(jobs) + len(skipped) > 1:
        parts = [f"{done} written"]
        if skipped:
            parts.append(f"{len(skipped)} skipped (output exists)")
        if failures:
            parts.append(f"{len(failures)} failed: {', '.join(failures[:5])}" + (" ..." if len(failures) > 5 else ""))
        print(f"{PROG}: {'; '.join(parts)}", file=sys.stderr)
    return EXIT_FAILED if failures else 0


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
        if args.command == "export":
            from bcrn_fast import export

            return int(export.run(args) or 0)
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
