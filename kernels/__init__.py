"""Triton kernels of bcrn_fast, installed as ``bcrn_fast.kernels``.

One file per fusion; each kernel opens with the formula it computes and the
tile one program owns. Launchers, checks and dispatch live in
``bcrn_fast.ops``.
"""
