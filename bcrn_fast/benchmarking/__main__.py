"""``python -m bcrn_fast.benchmarking [options]``: the ``bcrn-fast bench`` command on its own."""

import sys

from bcrn_fast.benchmarking.cli import main

sys.exit(main())
