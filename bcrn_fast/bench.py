"""``bcrn-fast bench``: the CLI face of :mod:`bcrn_fast.benchmarking`.

Kept as a thin module so the ``bcrn-fast`` parser can import it cheaply; the
harness (variants, verification before timing, roofline report) lives in
:mod:`bcrn_fast.benchmarking`.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from bcrn_fast.benchmarking.cli import add_arguments as _add

    _add(parser)


def run(args: argparse.Namespace) -> int:
    from bcrn_fast.benchmarking.cli import run as _run

    return _run(args)
