"""egad report: not implemented yet (see the issue tracker)."""

import sys


def main() -> int:
    print("egad report: not implemented yet", file=sys.stderr)
    sys.exit(1)
