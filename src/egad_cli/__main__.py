"""python -m egad_cli <command> … (what torchrun runs)."""

import sys

from egad_cli.cli import main

sys.exit(main())
