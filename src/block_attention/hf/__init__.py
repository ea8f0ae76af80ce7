"""The only code that touches transformers' or PEFT's internals: cache access, loading, RoPE, fingerprints, models.

:mod:`.cache` (every read or build of a transformers cache), :mod:`.compat` (version differences of the forward
call), :mod:`.unwrap` (the one PEFT unwrap), :mod:`.loading` (checkpoint loading, the one place transformers'
loaders are called), :mod:`.rope` (the model's rotary geometry and the exact re-rotation of cached keys),
:mod:`.fingerprint` (what besides a block's tokens determines its KV), :mod:`.registry` (the built-in real models)
and :mod:`.tiny` (the offline tiny models and tokenizer behind ``tiny-random``). A transformers release that changes
an internal is bridged here and nowhere else. Importing the package does no work.
"""
