"""``python -m zramfs``: the same as the ``zramfs`` console script (zramfs.cli)."""

import sys

from zramfs.cli import main

sys.exit(main())
