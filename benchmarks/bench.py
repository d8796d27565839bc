"""The benchmark harness (``make bench``): ``python benchmarks/bench.py --help``.

The code is the package ``benchmarks/harness``; this script only makes it importable from
any working directory.
"""

import sys
from pathlib import Path

# Appended, not prepended: the torchshift2 that is installed (or editable) stays the one
# that runs.
sys.path.append(str(Path(__file__).resolve().parent.parent))

from benchmarks.harness.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
