"""Triton kernels of bcrn_fast, installed as ``bcrn_fast.kernels``.

One file per fusion; each kernel opens with the formula it computes and the
tile one program owns. Launchers, checks and dispatch live in
``bcrn_fast.ops``.
"""

from typing import NamedTuple


class Config(NamedTuple):
    """One row of a kernel file's ``CONFIGS`` table: the largest tile and the launch shape.

    ``block_p`` is the pixel tile on large maps (launchers halve it on small
    maps, see ``bcrn_fast.ops._common.pixel_block``); ``block_k`` the input
    channel chunk where the kernel has one (0: none); ``why`` the ptxas fact
    (registers / spills, arch, Triton version) that chose it.
    """

    block_p: int
    num_warps: int
    num_stages: int = 1
    block_k: int = 0
    why: str = ""
