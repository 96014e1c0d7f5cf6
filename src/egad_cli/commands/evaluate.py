"""egad eval: not implemented yet (see the issue tracker)."""

import sys


def main() -> int:
    print("egad eval: not implemented yet", file=sys.stderr)
    sys.exit(1)
