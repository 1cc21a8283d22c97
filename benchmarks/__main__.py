"""One section of ``BENCHMARKS.md``, measured on its own: ``python -m benchmarks NAME [flags]``.

Each section's flags are the keywords of the function that measures it (``--quick`` takes its quick budget),
plus the model files it reads; it prints the section as it reads in the report, and ``--json`` keeps the raw
record.

python -m benchmarks --help                              # the sections
python -m benchmarks stages --requests 50 --seconds 10   # one section, its budget changed
python -m benchmarks soak --soak-s 60                    # the reliability phases, a one-minute soak
"""

import sys

from benchmarks.report import section_main


def main(argv: list[str] | None = None) -> int:
    return section_main(argv, __doc__)


if __name__ == "__main__":
    sys.exit(main())
