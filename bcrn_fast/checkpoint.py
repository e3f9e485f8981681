"""Loading and saving BCRN weights safely.

Supported files:

- ``.pth`` / ``.pt`` (and other ``torch.save`` files): read with
  ``torch.load(weights_only=True, map_location="cpu")``, which only rebuilds
  tensors and plain containers and refuses any other pickled object, so a
  checkpoint can never run code;
- ``.safetensors``: read with :func:`safetensors.torch.load_file`.

A checkpoint is a plain state dict (the official BCRN files) or a dict wrapping
one under ``params_ema`` (preferred), ``params`` or ``state_dict``; a leading
``module.`` (from ``DataParallel``) is stripped from every key. The scale is
read from the upsampler: ``upsample_block.0.weight`` has ``3 * s^2`` output
channels.
"""

from __future__ import annotations

import math
import os
import pickle
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bcrn_fast.model import BCRN, SCALES

__all__ = [
    "CheckpointError",
    "infer_scale",
    "load_checkpoint",
    "read_checkpoint",
    "save_checkpoint",
    "state_dict_from_file",
    "validate_state_dict",
]

UPSAMPLER_KEY = "upsample_block.0.weight"
WRAPPER_KEYS = ("params_ema", "params", "state_dict")  # in order of preference
SAFETENSORS_EXTS = (".safetensors",)
_LIST_LIMIT = 5


class CheckpointError(ValueError):
    """A file that is not a usable BCRN checkpoint (unreadable, unsafe, wrong keys or shapes, wrong scale)."""


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _is_safetensors(path: Path) -> bool:
    """By extension, else by content: 8-byte little-endian header length followed by ``{``."""
    if path.suffix.lower() in SAFETENSORS_EXTS:
        return True
    if path.suffix.lower() in (".pth", ".pt", ".bin", ".ckpt", ".tar"):
        return False
    with open(path, "rb") as fh:
        head = fh.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000


def _read_safetensors(path: Path) -> tuple[dict[str, Any], dict[str, str]]:
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path), device="cpu")
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            meta = dict(fh.metadata() or {})
    except Exception as exc:  # safetensors raises its own SafetensorError, plus OSError
        raise CheckpointError(f"{path}: not a readable safetensors file ({_one_line(exc)})") from None
    return tensors, meta


def _unpickler_reason(msg: str) -> tuple[bool, str]:
    """``(is_unsafe, short reason)`` from a weights-only unpickler error message."""
    lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
    for ln in lines:
        if "GLOBAL" in ln or "global" in ln.split():
            return True, ln
    for ln in lines:
        if ln.startswith("Unsupported") or "Unpickler error" in ln:
            return False, ln
    return False, lines[0] if lines else "unknown unpickling error"


def _read_torch(path: Path) -> tuple[Any, dict[str, str]]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "Detected pickle protocol 4 ..."
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        unsafe, reason = _unpickler_reason(str(exc))
        if unsafe:
            raise CheckpointError(
                f"{path}: refused to load: the file pickles objects other than tensors and plain containers, "
                f"and unpickling them could run arbitrary code ({reason})"
            ) from None
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({reason})") from None
    except Exception as exc:  # torch.load raises many types (RuntimeError, KeyError, EOFError, ...) on bad files
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint ({type(exc).__name__}: {_one_line(exc)})"
        ) from None
    meta: dict[str, str] = {}
    if isinstance(obj, Mapping) and isinstance(obj.get("metadata"), Mapping):
        meta = {str(k): str(v) for k, v in obj["metadata"].items()}
    return obj, meta


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """Select the state dict inside ``obj`` and strip a ``module.`` prefix from its keys."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{path}: expected a state dict (a mapping of names to tensors), got {type(obj).__name__}"
        )
    for key in WRAPPER_KEYS:
        inner = obj.get(key)
        if isinstance(inner, Mapping):
            obj = inner
            break
    non_tensors = [str(k) for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if non_tensors:
        shown = ", ".join(non_tensors[:_LIST_LIMIT])
        more = f" (+{len(non_tensors) - _LIST_LIMIT} more)" if len(non_tensors) > _LIST_LIMIT else ""
        raise CheckpointError(f"{path}: not a state dict: {len(non_tensors)} entries are not tensors: {shown}{more}")
    sd: dict[str, torch.Tensor] = {}
    for k, v in obj.items():
        name = str(k)
        if name.startswith("module."):
            name = name[len("module.") :]
        if name in sd:
            raise CheckpointError(f"{path}: duplicate key {name!r} after stripping the 'module.' prefix")
        sd[name] = v
    if not sd:
        raise CheckpointError(f"{path}: the checkpoint holds no tensors")
    return sd


def read_checkpoint(path: str | os.PathLike[str]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a checkpoint file into ``(state_dict, metadata)``, both on the CPU.

    ``metadata`` is the safetensors header metadata, or the ``metadata`` dict
    of a ``.pth`` written by :func:`save_checkpoint`; ``{}`` when there is none.
    Raises ``FileNotFoundError`` for a missing file and :class:`CheckpointError`
    for anything unreadable, unsafe or not a state dict.
    """
    p = Path(path)
    if p.is_dir():
        raise CheckpointError(f"{p} is a directory, not a checkpoint file")
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such checkpoint file")
    if _is_safetensors(p):
        obj, meta = _read_safetensors(p)
    else:
        obj, meta = _read_torch(p)
    return _unwrap(obj, p), meta


def state_dict_from_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The state dict stored in ``path`` (``.pth``/``.pt``/``.safetensors``), keys without ``module.``."""
    return read_checkpoint(path)[0]


def infer_scale(state_dict: Mapping[str, torch.Tensor]) -> int | None:
    """Upscaling factor ``s`` from ``upsample_block.0.weight`` (``3 s^2`` output channels), or ``None``.

    ``None`` means the key is absent; a shape that is not ``[3 s^2, 64, 1, 1]``
    for an ``s`` in (2, 3, 4) raises :class:`CheckpointError`.
    """
    w = state_dict.get(UPSAMPLER_KEY)
    if w is None:
        return None
    out = int(w.shape[0]) if w.dim() >= 1 else 0
    s = math.isqrt(out // 3) if out > 0 else 0
    if out % 3 != 0 or s * s * 3 != out or s not in SCALES:
        raise CheckpointError(
            f"{UPSAMPLER_KEY} has shape {tuple(w.shape)}: its {out} output channels are not 3*s^2 for a "
            f"supported scale s in {SCALES}"
        )
    return s


def _expected_shapes(scale: int) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = BCRN(scale)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_LIST_LIMIT])
    return shown + (f", ... (+{len(names) - _LIST_LIMIT} more)" if len(names) > _LIST_LIMIT else "")


def validate_state_dict(state_dict: Mapping[str, torch.Tensor], scale: int, source: str = "checkpoint") -> None:
    """Check that ``state_dict`` has exactly the keys and shapes of ``BCRN(scale)``.

    Raises :class:`CheckpointError` naming the missing and unexpected keys
    (first few, with counts) and every wrongly shaped key as
    ``key: expected [..] got [..]`` (first few, with count); the parts are
    separated by `` | ``.
    """
    expected = _expected_shapes(scale)
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [
        f"{k}: expected {list(expected[k])} got {list(state_dict[k].shape)}"
        for k in expected
        if k in state_dict and tuple(state_dict[k].shape) != expected[k]
    ]
    if not (missing or unexpected or wrong):
        return
    parts = []
    if missing:
        parts.append(f"{_count(len(missing), 'missing key')}: {_listing(missing)}")
    if unexpected:
        parts.append(f"{_count(len(unexpected), 'unexpected key')}: {_listing(unexpected)}")
    if wrong:
        parts.append(
            f"{_count(len(wrong), 'key')} with the wrong shape: {'; '.join(wrong[:_LIST_LIMIT])}"
            + (f"; ... (+{len(wrong) - _LIST_LIMIT} more)" if len(wrong) > _LIST_LIMIT else "")
        )
    matched = len(expected) - len(missing)
    what = "not a BCRN checkpoint" if matched < len(expected) // 2 else f"does not match BCRN x{scale}"
    raise CheckpointError(f"{source}: {what} ({len(expected)} tensors expected): " + " | ".join(parts))


def _resolve_scale(sd: Mapping[str, torch.Tensor], meta: Mapping[str, str], scale: int | None, source: str) -> int:
    if scale is not None and scale not in SCALES:
        raise CheckpointError(f"scale must be one of {SCALES}, got {scale!r}")
    inferred = infer_scale(sd)
    meta_scale = meta.get("scale")
    if inferred is not None and meta_scale is not None and meta_scale != str(inferred):
        raise CheckpointError(
            f"{source}: metadata says scale {meta_scale} but {UPSAMPLER_KEY} has the shape of scale {inferred}"
        )
    if inferred is None:
        validate_state_dict(sd, scale if scale is not None else 4, source)  # names the missing upsampler
        raise CheckpointError(f"{source}: {UPSAMPLER_KEY} is missing")  # not reached: validation fails first
    if scale is not None and scale != inferred:
        raise CheckpointError(f"{source}: the checkpoint is for scale x{inferred}, but scale x{scale} was requested")
    return inferred


def load_checkpoint(
    path: str | os.PathLike[str],
    scale: int | None = None,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    fused: bool = False,
    backend: str = "auto",
) -> nn.Module:
    """Build a BCRN from a checkpoint file, in eval mode, on ``device`` (and ``dtype`` when given).

    The scale is inferred from the weights and must equal ``scale`` when that
    is given. The state dict is validated against :class:`bcrn_fast.model.BCRN`
    and loaded with ``strict=True``. With ``fused=True`` the model is a
    ``bcrn_fast.fused.BCRNFused(scale, backend=backend)`` loaded from the same
    state dict. Raises ``FileNotFoundError`` or :class:`CheckpointError`.
    """
    sd, meta = read_checkpoint(path)
    source = str(path)
    s = _resolve_scale(sd, meta, scale, source)
    validate_state_dict(sd, s, source)
    model: nn.Module
    if fused:
        from bcrn_fast.fused import BCRNFused  # lazy: needs the kernels

        model = BCRNFused(s, backend=backend)
    else:
        model = BCRN(s)
    model.load_state_dict(sd, strict=True)
    model.eval()
    if dtype is not None:
        model.to(device=device, dtype=dtype)
    else:
        model.to(device=device)
    return model


def save_checkpoint(model: nn.Module, path: str | os.PathLike[str]) -> Path:
    """Write ``model``'s state dict to ``path`` and return the path.

    A ``.safetensors`` path gets a safetensors file whose metadata holds
    ``{"format": "bcrn_fast", "scale": "<s>"}``; any other extension
    (``.pth``, ``.pt``) gets ``torch.save({"state_dict": ..., "metadata": {...}})``
    with the same metadata, which :func:`load_checkpoint` reads back with
    ``weights_only=True``. Tensors are saved contiguous, on the CPU.
    """
    sd = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    scale = getattr(model, "scale", None)
    if scale is None:
        scale = infer_scale(sd)
    meta = {"format": "bcrn_fast"}
    if scale is not None:
        meta["scale"] = str(int(scale))
    p = Path(path)
    if p.suffix.lower() in SAFETENSORS_EXTS:
        from safetensors.torch import save_file

        save_file(sd, str(p), metadata=meta)
    else:
        torch.save({"state_dict": sd, "metadata": meta}, p)
    return p
