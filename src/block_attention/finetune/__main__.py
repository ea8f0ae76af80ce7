"""``python -m block_attention.finetune``: the fine-tuning CLI (see :func:`block_attention.finetune.train.main`)."""

import sys

from .train import main

sys.exit(main())
