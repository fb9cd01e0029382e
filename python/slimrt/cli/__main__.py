"""`python -m slimrt.cli`: the `slimrt` command."""

import sys

from slimrt.cli import main

sys.exit(main())
