"""Fused operators of bcrn_fast, one file per fusion.

Each op file holds, for one fusion: the weight packing from the reference
modules, the contract check, the backends in one ``<OP>_IMPLS`` table — the
``torch`` dataflow (the readable executable spec), the Triton launcher and,
where there is one, the CUDA-extension wrapper — all taking the op's argument
record, and the entry point, which is the ``torch.library`` custom op.
Shared leaves: ``_common`` (checks, geometry), ``backends`` (names,
availability, ``"auto"``), ``cuda_ext`` (the extension loader).
"""
