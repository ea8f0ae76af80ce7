#!/usr/bin/env python
"""Miniature reproduction of Block-Attention fine-tuning (see block_attention.finetune.reproduce).

    python scripts/reproduce_finetune.py            # full run, a few minutes on CPU
    python scripts/reproduce_finetune.py --quick    # CI smoke run (< 60 s)
"""

import sys

from block_attention.finetune.reproduce import main

if __name__ == "__main__":
    sys.exit(main())
