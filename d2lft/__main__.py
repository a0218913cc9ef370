"""`python -m d2lft ...`: the same as the `d2lft` command (see d2lft.cli)."""

import sys

from .cli import main

sys.exit(main())
