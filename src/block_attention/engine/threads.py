"""The engine's thread contract: one re-entrant lock per model object, held around every forward pass.

A forward pass can change model state for its duration (the fused cold prefill of :mod:`.fused` rewrites
``model.config._attn_implementation``), and a forward that runs while another thread holds that state would
compute with the wrong attention. So every forward the library runs on a model (block encoding, recovery, the
fused and separate prefills, decode steps, batched decode steps) holds :func:`model_lock` of that model. The lock
is shared by every engine (and scheduler) on the same model object, re-entrant (a stage may call another under
it), and kept in a weak dictionary, so it lives as long as the model. Work without the model (planning, store
lookups, tokenization, assembly's rotations) runs outside it, concurrently.
"""

from __future__ import annotations

import threading
import weakref

import torch

__all__ = ["model_lock"]

_LOCKS: "weakref.WeakKeyDictionary[torch.nn.Module, threading.RLock]" = weakref.WeakKeyDictionary()
_GUARD = threading.Lock()


def model_lock(model: torch.nn.Module) -> threading.RLock:
    """The one re-entrant lock of ``model`` (created on first use; the same object for every caller)."""
    with _GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock
