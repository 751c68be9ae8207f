"""``python3 -m bench`` (from scripts/): the harness's command line, `bench.cli.main`."""

import sys

from .cli import main

sys.exit(main())
