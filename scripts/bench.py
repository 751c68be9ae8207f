#!/usr/bin/env python3
"""Entry point of the benchmark harness, the ``scripts/bench/`` package (its docstring says
what it runs; ``python3 scripts/bench.py --help`` lists the options).  Python puts this
script's directory first on sys.path, so ``bench`` is that package."""

import sys

from bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
