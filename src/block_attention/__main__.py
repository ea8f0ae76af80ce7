"""``python -m block_attention`` runs the CLI."""

import sys

from .cli import main

sys.exit(main())
