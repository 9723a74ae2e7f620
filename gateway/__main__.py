"""``python -m gateway`` is the ``fieldgate`` command."""

import sys

from gateway.cli import main

sys.exit(main())
