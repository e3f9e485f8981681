"""``python -m bcrn_fast``: the ``bcrn-fast`` command line (see :mod:`bcrn_fast.cli`)."""

import sys

from bcrn_fast.cli import main

sys.exit(main())
