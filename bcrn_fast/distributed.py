"""Scale-out upscaling on Ray Data (``bcrn-fast upscale --engine ray``), one model per actor.

The pipeline::

    jobs (src, dst, kind)                      listed on the driver: bcrn_fast.jobs.plan_jobs for local
      -> ray.data.from_items(...)              paths, fsspec (file://, s3://, gs://, ...) for URIs
      -> map_batches(BCRNUpscaler, batch_size=1,
                     compute=ActorPoolStrategy(min_size=1, max_size=workers),
                     num_gpus=gpus_per_worker, num_cpus=cpus_per_worker)
      -> one small result row per file         (status, error, worker, seconds, pixels)

Each actor loads the model once (the fused model on CUDA, the reference BCRN on the CPU, as the
local CLI picks), reads its file, upscales it with the local pipeline's :class:`bcrn_fast.pipeline.Runner`
and writes the PNG (or, for a video, the whole video: one video per task) **from inside the actor**
with :func:`bcrn_fast.jobs.atomic_output`, so the upscaled pixels never cross the object store and
the outputs equal the local CLI's byte for byte. Images have any size: each actor call takes one.

Failure semantics. Ray Data restarts a dead actor and re-runs its task (at-least-once). A rerun
can redo files that were already written, which is harmless: every write goes to a hidden
temporary file renamed onto the destination only when complete, and the same input gives the same
bytes, so an output is either absent or whole, never duplicated or half-written. Unless
``overwrite`` is set an actor skips a file whose output already exists (the driver refused or
skipped existing outputs before the run, so such a file is one a previous attempt finished). A
file that cannot be read (corrupt, unsupported) is not retried: it comes back as a ``failed`` row
with a one-line reason, and the run stops there unless ``keep_going``.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bcrn_fast.imageio import IMAGE_EXTENSIONS
from bcrn_fast.jobs import Job, plan_jobs
from bcrn_fast.ops.backends import BackendUnavailable
from bcrn_fast.validation import InputError

__all__ = [
    "BCRNUpscaler",
    "RayRunSummary",
    "RayUnavailable",
    "plan_uri_jobs",
    "require_ray",
    "run_upscale",
    "upscale_with_ray",
]

PROG = "bcrn-fast"
INSTALL_HINT = "pip install 'bcrn_fast[ray]'"
MAX_BLOCKS = 4096  # image rows per block grow past this many files; retries redo at most one block


class RayUnavailable(BackendUnavailable):
    """Ray Data is not installed (or too old), or the cluster cannot be reached, for ``--engine ray``."""


def require_ray() -> Any:
    """The ``ray`` module with Ray Data, or :class:`RayUnavailable` with the install command."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise RayUnavailable(f"--engine ray needs Ray Data ({exc.name or exc}); install it: {INSTALL_HINT}") from None
    if not hasattr(ray.data, "ActorPoolStrategy"):
        raise RayUnavailable(f"ray {ray.__version__} has no ray.data.ActorPoolStrategy; upgrade: {INSTALL_HINT}")
    return ray


# ----------------------------------------------------------------------------- file locations


def _is_uri(path: str | os.PathLike[str]) -> bool:
    return "://" in str(path)


def _fs(uri: str) -> tuple[Any, str]:
    """``(fsspec filesystem, path inside it)`` for a URI (``file://``, ``s3://``, ...)."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as exc:  # unknown protocol or its package (s3fs, gcsfs) missing
        raise InputError(f"{uri}: cannot open this filesystem ({' '.join(str(exc).split())})") from None


def _join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *[p.strip("/") for p in parts if p and p != "."]])


def plan_uri_jobs(
    inputs: Sequence[str],
    outdir: str,
    scale: int,
    *,
    recursive: bool = False,
    skip_existing: bool = False,
    overwrite: bool = False,
) -> tuple[list[Job], list[Job]]:
    """Like :func:`bcrn_fast.jobs.plan_jobs` for fsspec URIs (images only): ``(to_run, skipped)``.

    An image ``<input>/<rel>/<stem>.<ext>`` becomes ``<outdir>/<rel>/<stem>_x<S>.png`` (``<rel>``
    only with ``recursive``). Local paths go to ``plan_jobs`` itself, so the rules are the CLI's.
    ``Job.src``/``dst`` hold the URIs as ``Path``-like strings (``str(job.src)`` gives them back).
    """
    if not any(_is_uri(i) for i in (*inputs, outdir)):
        return plan_jobs(
            inputs, Path(outdir), scale, recursive=recursive, skip_existing=skip_existing, overwrite=overwrite
        )
    if skip_existing and overwrite:
        raise InputError("--skip-existing and --overwrite exclude each other; pass one of them")
    out_uri = outdir if _is_uri(outdir) else Path(outdir).resolve().as_uri()
    out_fs, _ = _fs(out_uri)
    rows: list[tuple[str, str]] = []
    for item in inputs:
        uri = item if _is_uri(item) else Path(item).resolve().as_uri()
        fs, root = _fs(uri)
        protocol = uri.split("://", 1)[0]
        if not fs.exists(root):
            raise InputError(f"{item}: no such file or folder")
        if fs.isdir(root):
            found = fs.find(root) if recursive else [p for p in fs.ls(root, detail=False) if fs.isfile(p)]
            found = sorted(
                p for p in found if Path(p).suffix.lower() in IMAGE_EXTENSIONS and not Path(p).name.startswith(".")
            )
            if not found:
                raise InputError(f"{item}: folder holds no .png/.jpg/.jpeg/.bmp images")
            for p in found:
                rel = str(Path(p).parent.relative_to(root.rstrip("/") or "/")) if recursive else ""
                rows.append((f"{protocol}://{p}", _join(out_uri, rel, f"{Path(p).stem}_x{scale}.png")))
        else:
            rows.append((uri, _join(out_uri, f"{Path(root).stem}_x{scale}.png")))
    seen: dict[str, str] = {}
    for src, dst in rows:
        if dst in seen:
            raise InputError(f"{seen[dst]} and {src} would both be written to {dst}; rename one of them")
        seen[dst] = src
    jobs = [Job(src, dst, "image") for src, dst in rows]  # type: ignore[arg-type]  # URIs, not Paths
    existing = [j for j in jobs if out_fs.exists(_fs(str(j.dst))[1])]
    if existing and not (overwrite or skip_existing):
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise InputError(f"{existing[0].dst}{more} already exists; pass --overwrite to replace or --skip-existing")
    if skip_existing:
        return [j for j in jobs if j not in existing], existing
    return jobs, []


# ----------------------------------------------------------------------------- the actor


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename + ': ' if exc.filename else ''}{exc.strerror}"
    return " ".join(str(exc).split()) or type(exc).__name__


def _fused_available() -> bool:
    try:
        from bcrn_fast.fused import BCRNFused  # noqa: F401
    except ImportError:
        return False
    return True


class BCRNUpscaler:
    """Ray Data callable class: loads BCRN once, then upscales and writes one file per row.

    Rows in: ``src``, ``dst``, ``kind`` (``"image"``/``"video"``); rows out: ``src``, ``dst``,
    ``status`` (``written``, ``exists`` or ``failed``), ``error``, ``note``, ``worker``
    (``host:pid``), ``seconds`` (read + upscale + write) and ``pixels`` (input pixels).
    """

    def __init__(
        self,
        weights: str,
        scale: int | None = None,
        device: str = "cpu",
        dtype: str = "fp32",
        backend: str | None = None,
        fused: bool = False,
        overwrite: bool = False,
        threads: int | None = None,
        precision: str = "ieee",
        tile: int | str | None = None,
        max_memory: int | None = None,
        video: dict[str, Any] | None = None,
        compile: bool = False,  # noqa: A002 - the CLI's --compile
        _crash_once: str | None = None,
    ) -> None:
        import torch

        from bcrn_fast.checkpoint import load_checkpoint
        from bcrn_fast.cli import apply_precision, resolve_dtype
        from bcrn_fast.pipeline import Runner, prepare_model

        if threads:
            torch.set_num_threads(int(threads))
        self.device = torch.device(device)
        self.dtype = resolve_dtype(dtype, self.device)  # "auto": fp16 on a CUDA worker, fp32 elsewhere
        self.tmp = Path(tempfile.mkdtemp(prefix="bcrn_ray_"))
        local_weights = self._fetch(weights, "weights") if _is_uri(weights) else Path(weights)
        on_cuda = self.device.type == "cuda"
        # the CLI's choice: the fused model when asked for (--fused, --backend) and by default on CUDA
        # when bcrn_fast.fused imports; otherwise (and on the CPU) the reference BCRN
        use_fused = backend != "reference" and (fused or backend is not None or (on_cuda and _fused_available()))

        def load(dtype: torch.dtype) -> torch.nn.Module:
            model = load_checkpoint(
                local_weights, scale, device=self.device, dtype=dtype, fused=use_fused, backend=backend or "auto"
            )
            apply_precision(model, precision, self.device)  # the CLI's --precision
            return model

        model = load(self.dtype)
        self.scale = int(model.scale)
        self.model = prepare_model(model, self.device, compile=compile)
        # half outputs that are not finite are re-run in fp32 on an eager fp32 model, loaded on first need
        self.runner = Runner(
            self.model, self.device, self.dtype, tile=tile, max_memory=max_memory,
            fallback=lambda: prepare_model(load(torch.float32), self.device, compile=False),
        )  # fmt: skip
        self.overwrite, self.video, self.crash_once = overwrite, dict(video or {}), _crash_once
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.calls = 0

    def _fetch(self, uri: str, name: str) -> Path:
        fs, path = _fs(uri)
        local = self.tmp / f"{name}{Path(path).suffix}"
        fs.get_file(path, str(local))
        return local

    def _maybe_crash(self) -> None:
        # fault injection for the tests: the first actor to reach its second file dies, once
        if self.crash_once and self.calls >= 2:
            try:
                fd = os.open(self.crash_once, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return
            os.close(fd)
            os._exit(1)

    def _exists(self, dst: str) -> bool:
        if _is_uri(dst):
            fs, path = _fs(dst)
            return bool(fs.exists(path))
        return Path(dst).exists()

    def _image(self, src: str, dst: str) -> tuple[str, int]:
        from bcrn_fast.imageio import ImageError, atomic_output, read_image, write_png
        from bcrn_fast.model import MIN_SIZE
        from bcrn_fast.pipeline import NonFiniteOutput, PipelineStats, Recomputed

        local_src = self._fetch(src, "input") if _is_uri(src) else Path(src)
        try:
            x, note = read_image(local_src)
        except ImageError as exc:  # name the file as the user knows it, not the downloaded copy
            raise ImageError(str(exc).replace(str(local_src), src)) from None
        h, w = x.shape[-2:]
        notes = [note] if note else []
        if h < MIN_SIZE or w < MIN_SIZE:
            notes.append(f"{w}x{h} is below {MIN_SIZE}x{MIN_SIZE}; reflect-padded to run, output cropped back")
        outs, ready = self.runner([x[0]], PipelineStats())
        if ready is not None:
            ready.synchronize()
        if isinstance(outs[0], Recomputed):  # the half output was not finite: the fp32 re-run's, or nothing
            if outs[0].out is None:
                raise NonFiniteOutput(f"{src}: {outs[0].message()}")
            notes.append(outs[0].message())
            outs = [outs[0].out]
        if _is_uri(dst):
            # an object-store PUT is atomic: readers see the old object or the whole new one
            local = self.tmp / "output.png"
            write_png(outs[0].numpy(), local)
            fs, path = _fs(dst)
            fs.makedirs(str(Path(path).parent), exist_ok=True)
            fs.put_file(str(local), path)
        else:
            with atomic_output(dst) as tmp:
                write_png(outs[0].numpy(), tmp)
        return "; ".join(notes), int(h * w)

    def _video(self, src: str, dst: str) -> tuple[str, int]:
        if _is_uri(src) or _is_uri(dst):
            raise InputError(f"{src}: videos must be on a local or shared filesystem, not a URI")
        from bcrn_fast.video import parse_frames, probe, upscale_video

        opts = dict(self.video)
        frames = parse_frames(opts.pop("frames", None))
        notes: list[str] = []
        info = probe(Path(src))
        upscale_video(self.runner, Path(src), Path(dst), self.scale, frames=frames, note=notes.append, **opts)
        return "; ".join(notes), int(info.width * info.height * info.frames)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {k: [] for k in ("src", "dst", "status", "error", "note", "worker")}
        out |= {"seconds": [], "pixels": []}
        for src, dst, kind in zip(batch["src"], batch["dst"], batch["kind"], strict=True):
            src, dst, kind = str(src), str(dst), str(kind)
            self.calls += 1
            self._maybe_crash()
            t0 = time.perf_counter()
            status, error, note, pixels = "written", "", "", 0
            if not self.overwrite and self._exists(dst):
                status = "exists"  # finished by an earlier attempt of this task
            else:
                try:
                    note, pixels = self._video(src, dst) if kind == "video" else self._image(src, dst)
                except (InputError, ValueError, OSError) as exc:  # ImageError, VideoError: the file, not the worker
                    status, error = "failed", _one_line(exc)
            for k, v in (("src", src), ("dst", dst), ("status", status), ("error", error), ("note", note)):
                out[k].append(v)
            out["worker"].append(self.worker)
            out["seconds"].append(time.perf_counter() - t0)
            out["pixels"].append(pixels)
        return out

    def __del__(self) -> None:
        shutil.rmtree(getattr(self, "tmp", ""), ignore_errors=True)


# ----------------------------------------------------------------------------- the driver


@dataclass
class WorkerStats:
    """One actor process's share of the run."""

    images: int = 0
    seconds: float = 0.0  # busy time: read + upscale + write
    pixels: int = 0

    @property
    def rate(self) -> float:
        """Files per busy second."""
        return self.images / self.seconds if self.seconds > 0 else 0.0


@dataclass
class RayRunSummary:
    """Result of :func:`upscale_with_ray`: counts, failures, wall time and per-worker throughput."""

    written: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)  # outputs an earlier attempt had finished
    failed: dict[str, str] = field(default_factory=dict)  # src -> one-line reason
    skipped: int = 0  # outputs that existed before the run (--skip-existing)
    wall: float = 0.0
    workers: dict[str, WorkerStats] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """Human summary: one total line, then one line per worker."""
        done = len(self.written) + len(self.existing)
        rate = done / self.wall if self.wall > 0 else 0.0
        parts = [f"{done} written"]
        if self.skipped:
            parts.append(f"{self.skipped} skipped (output exists)")
        if self.failed:
            shown = ", ".join(list(self.failed)[:5]) + (" ..." if len(self.failed) > 5 else "")
            parts.append(f"{len(self.failed)} failed: {shown}")
        out = [f"ray: {'; '.join(parts)} in {self.wall:.1f} s ({rate:.2f} files/s) on {len(self.workers)} worker(s)"]
        for name, w in sorted(self.workers.items()):
            mpix = w.pixels / w.seconds / 1e6 if w.seconds > 0 else 0.0
            out.append(
                f"ray: worker {name}: {w.images} files, busy {w.seconds:.1f} s, {w.rate:.2f} files/s, "
                f"{mpix:.3f} input MPix/s"
            )
        return out


def _default_workers(ray: Any, gpus_per_worker: float) -> int:
    if gpus_per_worker > 0:
        gpus = float(ray.cluster_resources().get("GPU", 0))
        if gpus < gpus_per_worker:
            raise InputError(f"the Ray cluster has {gpus:g} GPUs, fewer than --gpus-per-worker {gpus_per_worker:g}")
        return max(1, int(gpus // gpus_per_worker))
    return 1


def _absolute(path: str | os.PathLike[str]) -> str:
    """Local paths made absolute (actors on other nodes or in other folders see the same file); URIs as they are."""
    return str(path) if _is_uri(path) else str(Path(path).resolve())


def _dataset(ray: Any, jobs: Sequence[Job]) -> Any:
    """One row per file; each video its own block (one video per task), images spread over many blocks."""
    rows = [{"src": _absolute(j.src), "dst": _absolute(j.dst), "kind": j.kind} for j in jobs]
    images = [r for r in rows if r["kind"] != "video"]
    videos = [r for r in rows if r["kind"] == "video"]
    parts = []
    if videos:
        parts.append(ray.data.from_items(videos, override_num_blocks=len(videos)))
    if images:
        parts.append(ray.data.from_items(images, override_num_blocks=min(len(images), MAX_BLOCKS)))
    return parts[0] if len(parts) == 1 else parts[0].union(*parts[1:])


def upscale_with_ray(
    jobs: Sequence[Job],
    weights: str | os.PathLike[str],
    *,
    scale: int | None = None,
    device: str = "cpu",
    dtype: str = "fp32",
    precision: str = "ieee",
    backend: str | None = None,
    fused: bool = False,
    overwrite: bool = False,
    keep_going: bool = False,
    address: str | None = None,
    workers: int | None = None,
    gpus_per_worker: float | None = None,
    cpus_per_worker: float | None = None,
    tile: int | str | None = None,
    max_memory: int | None = None,
    video: dict[str, Any] | None = None,
    compile: bool = False,  # noqa: A002 - the CLI's --compile
    progress: bool = False,
    on_result: Any = None,
    _crash_once: str | None = None,
) -> RayRunSummary:
    """Upscale ``jobs`` (from :func:`bcrn_fast.jobs.plan_jobs` or :func:`plan_uri_jobs`) on a Ray cluster.

    Connects to ``address`` (``"auto"``, ``"ray://host:10001"``, ...) or starts a local cluster
    (shut down afterwards) unless Ray is already initialised. ``workers`` actors (default: one per
    ``gpus_per_worker`` GPUs of the cluster, or 1 without GPUs) each hold ``gpus_per_worker`` GPUs
    (default 1 on ``device="cuda"``, else 0) and ``cpus_per_worker`` CPUs (default 1 with GPUs,
    else the cluster's CPUs split over the workers; also the actor's torch threads).
    ``on_result(row)`` is called on the driver for each finished file as results stream in. Without
    ``keep_going`` the first failed file raises :class:`InputError` (files already written stay).
    """
    ray = require_ray()
    if device.startswith("cuda") and gpus_per_worker is not None and gpus_per_worker <= 0:
        raise InputError("--device cuda needs --gpus-per-worker > 0 (Ray gives GPUs only to actors that ask)")
    if gpus_per_worker is None:
        gpus_per_worker = 1.0 if device.startswith("cuda") else 0.0
    if gpus_per_worker > 0 and not device.startswith("cuda"):
        raise InputError(f"--gpus-per-worker {gpus_per_worker:g} reserves GPUs but --device is {device}; pass cuda")
    if workers is not None and workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}")
    summary = RayRunSummary()
    if not jobs:
        return summary
    started = False
    if not progress:
        logging.getLogger("ray.data").setLevel(logging.ERROR)  # execution plans and "finished in" lines
    if not ray.is_initialized():
        # the C++ core logs harmless restart advice at error level; keep the terminal for our own lines
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
        try:
            ray.init(address=address, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            where = f" at {address}" if address else ""
            raise RayUnavailable(f"cannot start or reach the Ray cluster{where}: {_one_line(exc)}") from None
        started = True
    try:
        from ray.data import ActorPoolStrategy, DataContext

        ctx = DataContext.get_current()
        ctx.enable_progress_bars = progress
        ctx.print_on_execution_start = progress
        n = workers or _default_workers(ray, gpus_per_worker)
        n = min(n, len(jobs))
        if cpus_per_worker is None:
            total_cpus = float(ray.cluster_resources().get("CPU", 1))
            cpus_per_worker = 1.0 if gpus_per_worker > 0 else max(1.0, float(int(total_cpus // n)))
        ds = _dataset(ray, jobs).map_batches(
            BCRNUpscaler,
            batch_size=1,
            batch_format="numpy",
            compute=ActorPoolStrategy(min_size=1, max_size=n),
            num_gpus=gpus_per_worker or None,
            num_cpus=cpus_per_worker,
            fn_constructor_kwargs={
                "weights": _absolute(weights),
                "scale": scale,
                "device": device,
                "dtype": dtype,
                "precision": precision,
                "backend": backend,
                "fused": fused,
                "overwrite": overwrite,
                "threads": max(1, int(cpus_per_worker)),
                "tile": tile,
                "max_memory": max_memory,
                "video": video,
                "compile": compile,
                "_crash_once": _crash_once,
            },
        )
        _collect(_rows(ds), jobs, summary, keep_going=keep_going, on_result=on_result)
    finally:
        if started:
            ray.shutdown()
    return summary


def _collect(
    rows: Iterator[dict[str, Any]],
    jobs: Sequence[Job],
    summary: RayRunSummary,
    *,
    keep_going: bool,
    on_result: Any = None,
) -> None:
    """Fold the streamed result rows into ``summary``; the first failure raises unless ``keep_going``.

    Rows name files by absolute path; they are reported with the paths the caller gave. A file is
    counted once even if a retried task reported it again.
    """
    names = {_absolute(j.dst): (str(j.src), str(j.dst)) for j in jobs}
    seen: set[str] = set()
    t0 = time.perf_counter()
    for row in rows:
        summary.wall = time.perf_counter() - t0
        if row["dst"] in seen:
            continue
        seen.add(row["dst"])
        row["src"], row["dst"] = names.get(row["dst"], (row["src"], row["dst"]))
        stats = summary.workers.setdefault(row["worker"], WorkerStats())
        stats.seconds += row["seconds"]
        if row["status"] == "failed":
            summary.failed[row["src"]] = row["error"]
        else:
            stats.images += 1
            stats.pixels += row["pixels"]
            (summary.written if row["status"] == "written" else summary.existing).append(row["dst"])
        if on_result is not None:
            on_result(row)
        if row["status"] == "failed" and not keep_going:
            raise InputError(row["error"])
    summary.wall = time.perf_counter() - t0


def _rows(ds: Any) -> Iterator[dict[str, Any]]:
    for row in ds.iter_rows():
        yield {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}


def _video_options(args: argparse.Namespace) -> dict[str, Any]:
    """The CLI's video flags, as keyword arguments of :func:`bcrn_fast.video.upscale_video`."""
    opts: dict[str, Any] = {}
    for name in ("codec", "crf", "pix_fmt", "preset", "frames"):
        if getattr(args, name, None) is not None:
            opts[name] = getattr(args, name)
    return opts


def run_upscale(jobs: list[Job], args: argparse.Namespace) -> int:
    """``bcrn-fast upscale --engine ray``: run ``jobs`` on Ray, print outputs and the summary; exit status.

    0 when every file was written, 1 when some failed with ``--keep-going``; without it the first
    failure raises :class:`InputError` (the CLI prints it and exits 2).
    """

    def report(row: dict[str, Any]) -> None:
        if row["status"] == "failed":
            print(f"{PROG}: failed: {row['error']}", file=sys.stderr)
            return
        if row["note"]:
            print(f"{PROG}: note: {row['src']}: {row['note']}", file=sys.stderr)
        print(row["dst"], flush=True)

    summary = upscale_with_ray(
        jobs,
        args.weights,
        scale=args.scale,
        device=str(args.device),
        dtype=args.dtype,
        precision=getattr(args, "precision", "ieee"),
        backend=args.backend,
        fused=bool(args.fused),
        overwrite=bool(getattr(args, "overwrite", False)),
        keep_going=bool(args.keep_going),
        address=args.ray_address,
        workers=args.workers,
        gpus_per_worker=args.gpus_per_worker,
        tile=getattr(args, "tile", None),
        max_memory=getattr(args, "max_memory", None),
        video=_video_options(args),
        compile=bool(getattr(args, "compile", False)),
        progress=not args.no_progress and sys.stderr.isatty(),
        on_result=report,
    )
    for line in summary.lines():
        print(f"{PROG}: {line}", file=sys.stderr)
    return 1 if summary.failed else 0
