"""The only code that touches transformers' or PEFT's internals: cache access, RoPE, fingerprints, tiny models.

:mod:`.compat` (version differences and cache access), :mod:`.rope` (the model's rotary geometry and the exact
re-rotation of cached keys), :mod:`.fingerprint` (what besides a block's tokens determines its KV),
:mod:`.tiny` (the offline tiny models and tokenizer behind ``tiny-random``). A transformers release that changes
an internal is bridged here and nowhere else. Importing the package does no work.
"""
