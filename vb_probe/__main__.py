"""``python -m vb_probe``: the ``vb-probe`` command (what ``torchrun -m vb_probe …`` starts in each process)."""

import sys

from vb_probe.cli import main

sys.exit(main())
