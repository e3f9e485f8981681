"""Fused operators of bcrn_fast, one file per fusion.

Each file holds, for one fusion: the weight packing from the reference
modules, the ``torch`` backend (the same fused dataflow written with PyTorch
ops: the readable executable spec of the algebra), the Triton launcher (checks,
grid, config) and the ``torch.library`` custom op that dispatches between them.
"""
