"""``python -m training.evaluate``: the former name of ``python -m interpret.evaluate``, kept working."""

from __future__ import annotations

import sys

from interpret.evaluate import main, parse_args

__all__ = ["main", "parse_args"]

if __name__ == "__main__":
    sys.exit(main())
