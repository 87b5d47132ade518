"""``python -m vrlang`` runs the command line (see :mod:`vrlang.cli`)."""

import sys

from vrlang.cli import main

sys.exit(main())
