"""Triton kernels of bcrn_fast, installed as ``bcrn_fast.kernels``.

One file per fusion; each kernel opens with the formula it computes and the
tile one program owns. Launchers, checks and dispatch live in
``bcrn_fast.ops``.

Each kernel file ends with its launch configurations as data: a ``CONFIGS``
decision table of :class:`Rule` rows (first match wins) and a small lookup.
This package imports no Triton, so ``bcrn_fast.ops`` may read the tables.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class Config(NamedTuple):
    """One launch configuration: the largest pixel tile and the launch shape.

    ``block_p`` is the pixel tile on large maps (``shrink``: halved on small
    maps, see :func:`pixel_tile`; otherwise only the width cap of :func:`natural_tile`); ``block_k`` caps the input
    channel chunk where the kernel has one (0: no cap / none); ``why`` the
    ptxas fact (registers / spills, arch, Triton version) that chose it;
    ``maxnreg``: a per-thread register cap passed to ptxas (0: none; the
    occupancy sweep tries it, no table row uses it yet; only the ConvNeXt
    launcher passes it).
    """

    block_p: int
    num_warps: int
    num_stages: int = 1
    block_k: int = 0
    why: str = ""
    shrink: bool = True
    maxnreg: int = 0


class Rule(NamedTuple):
    """A row of a ``CONFIGS`` table: ``config`` applies when every fact in ``when`` holds (absent: any)."""

    when: dict[str, object]
    config: Config


def pick(rules: tuple[Rule, ...], **facts: object) -> Config:
    """The config of the first row of ``rules`` whose ``when`` matches ``facts``."""
    for rule in rules:
        if all(facts[k] == v for k, v in rule.when.items()):
            return rule.config
    raise LookupError(f"no launch configuration for {facts}")


def dot_mode(dtype: torch.dtype, precision: str) -> str:
    """The tables' ``mode`` fact: "ieee" or "tf32" (fp32 storage, its dot precision) or "half" (fp16/bf16)."""
    if dtype != torch.float32:
        return "half"
    return "ieee" if precision == "ieee" else "tf32"


def next_pow2(n: int, minimum: int = 16) -> int:
    """Smallest power of two >= max(n, minimum) (tl.dot needs dims >= 16)."""
    p = minimum
    while p < n:
        p *= 2
    return p


def natural_tile(hw: int | None, channels: int) -> int:
    """The map-size rule every launcher shares: pixels per program before any per-mode cap.

    A program owns ``BLOCK_P`` pixels of one image times all channels; keep the
    ``[BLOCK_P, C]`` fp32 tile near 8K elements so it lives in registers, and
    halve it (down to 16) while it is at least twice the map (``hw=None``: no map-size limit).
    """
    block = 128 if channels <= 64 else 64
    while hw is not None and block > 16 and block >= 2 * hw:
        block //= 2
    return block


def pixel_tile(config: Config, hw: int, channels: int) -> int:
    """``BLOCK_P`` for ``config`` on an ``hw``-pixel map of ``channels``-wide tiles (``shrink``: with the map)."""
    return min(config.block_p, natural_tile(hw if config.shrink else None, channels))
