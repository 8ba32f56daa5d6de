"""`python -m cyberdial` runs the command line."""

import sys

from cyberdial.cli import main

sys.exit(main())
