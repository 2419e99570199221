"""``python -m minsharp`` (and ``torchrun -m minsharp``) runs the command line."""

import sys

from minsharp.cli.main import main

sys.exit(main())
