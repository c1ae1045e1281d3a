"""Size of what a device call carries: the working tree (tracked and untracked-not-ignored files) plus the
carried paths named on the command line, against the 64 MiB a call may send.

    python benchmarks/travel_size.py .whl          # exit status 1 when over the limit

The device tool sends the checkout a session was started in; run this in that checkout.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

LIMIT_BYTES = 64 * 2**20
MIB = 2**20


def tree_bytes(root: Path) -> int:
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                            check=True, capture_output=True).stdout.split(b"\0")
    files = (root / name.decode() for name in listed if name)
    return sum(path.stat().st_size for path in files if path.is_file())  # deleted-but-tracked files travel not


def path_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("carry", nargs="*", type=Path, help="ignored paths the call carries (e.g. .whl)")
    args = parser.parse_args(argv)
    root = Path(subprocess.run(["git", "rev-parse", "--show-toplevel"], check=True, capture_output=True,
                               text=True).stdout.strip())
    parts = {"working tree": tree_bytes(root)}
    for path in args.carry:
        if not path.exists():
            print(f"travel_size: carried path {path} does not exist", file=sys.stderr)
            return 2
        parts[str(path)] = path_bytes(path)
    total = sum(parts.values())
    listing = " + ".join(f"{name} {size / MIB:.1f} MiB" for name, size in parts.items())
    verdict = "fits" if total <= LIMIT_BYTES else "is OVER"
    print(f"travel_size: {listing} = {total / MIB:.1f} MiB, {verdict} the {LIMIT_BYTES // MIB} MiB "
          "a device call carries")
    return 0 if total <= LIMIT_BYTES else 1


if __name__ == "__main__":
    sys.exit(main())
