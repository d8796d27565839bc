"""Build the C++ CPU kernels ahead of time: ``python -m torchshift2.build [--force]``.

The first CPU shift of an environment otherwise compiles them (about a minute on two
cores). Prints the library's path; the build's own messages go to stderr.
"""

from __future__ import annotations

import argparse
import sys
import time


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m torchshift2.build",
        description="Build (or find in the cache) torchshift2's C++ CPU kernels for this "
        "environment. The cache is $TORCHSHIFT2_BUILD_DIR (default ~/.cache/torchshift2), one "
        "directory per environment (torch install, Python, compiler, flags, CPU, sources).")
    parser.add_argument("--force", action="store_true",
                        help="rebuild even if the cache holds a build for this environment")
    args = parser.parse_args(argv)

    from torchshift2.backends import cpp
    from torchshift2.backends.cpp import build

    start = time.monotonic()
    try:
        build.load(force=args.force)
    except Exception as error:  # noqa: BLE001 - reported, exit status 1
        message = str(error).strip().splitlines()
        print(f"torchshift2: the C++ CPU kernels are unavailable: {type(error).__name__}: "
              f"{message[-1] if message else ''}", file=sys.stderr)
        return 1
    how = "built" if build.built_here() else "cached"
    print(f"{build.library_path()} ({how}, {cpp.isa()}, {time.monotonic() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
