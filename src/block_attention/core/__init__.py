"""The model-independent vocabulary: blocks, prompt layout and rendering, configs, errors, KV containers.

:mod:`.blocks` (the unit of caching), :mod:`.layout` (token layout and attention masks), :mod:`.prompt` (rendering
and the prompt config), :mod:`.config` (the validating engine and generation configs), :mod:`.checks` (value
checks shared by the configs), :mod:`.errors` (the one error hierarchy), :mod:`.kv` (one block's KV),
:mod:`.packaged` (data files shipped in the package), :mod:`.quality` (does a model expect block attention?).
Nothing here touches transformers' internals or runs a model; importing the package does no work.
"""
