"""egad inspect-entropy: not implemented yet (see the issue tracker)."""

import sys


def main() -> int:
    print("egad inspect-entropy: not implemented yet", file=sys.stderr)
    sys.exit(1)
