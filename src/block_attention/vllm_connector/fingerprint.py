"""The model fingerprint of block KV computed by vLLM: checkpoint files + the vLLM settings that shape the KV.

vLLM does not expose live weights the way a transformers model does, so the fingerprint is derived from what it
loads: every regular file of the checkpoint folder (name, size and blake2b of all bytes: weights, ``config.json``,
tokenizer files), plus the vLLM model settings that change the KV of the same weights (dtype, KV-cache dtype,
quantization, the Hugging Face config vLLM resolved, revision) and the backend tag ``"vllm"``. Every replica that
serves the same checkpoint folder with the same settings computes the same fingerprint (the digest is of content,
not of paths or times), so N replicas share one Redis tier; any changed byte or setting changes every key.

KV computed by vLLM and KV computed by this library's own engine are kept apart on purpose (the backend tag): the
two compute the same function with different kernels, equal only up to float rounding.

:func:`checkpoint_digest` hashes a folder once per process (cached by path, sizes and modification times).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

from block_attention.core.errors import ConfigError
from block_attention.store.keys import Fingerprint, fingerprint

_READ = 8 << 20


def _files(folder: str) -> list[os.DirEntry[str]]:
    return sorted((e for e in os.scandir(folder) if e.is_file(follow_symlinks=True) and not e.name.startswith(".")),
                  key=lambda e: e.name)


def checkpoint_digest(folder: str | os.PathLike[str]) -> str:
    """blake2b of every regular top-level file of a checkpoint folder (names, sizes, all bytes)."""
    path = os.fspath(folder)
    if not os.path.isdir(path):
        raise ConfigError(f"The checkpoint {path!r} is not a local folder; point vLLM at a local checkpoint folder "
                          "(the connector fingerprints its files).")
    stamp = tuple((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in _files(path))
    return _digest(os.path.realpath(path), stamp)


@functools.lru_cache(maxsize=8)
def _digest(path: str, stamp: tuple[tuple[str, int, int], ...]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for name, size, _ in stamp:
        h.update(f"{name}:{size};".encode())
        with open(os.path.join(path, name), "rb") as f:
            while chunk := f.read(_READ):
                h.update(chunk)
    return h.hexdigest()


def vllm_fingerprint(folder: str | os.PathLike[str], *, dtype: str, kv_cache_dtype: str,
                     quantization: str | None, hf_config: Mapping[str, Any], revision: str | None) -> Fingerprint:
    """Fingerprint of block KV computed by vLLM from the checkpoint in ``folder`` with these settings."""
    kept = {k: v for k, v in hf_config.items() if not k.startswith("_") and k != "transformers_version"}  # no paths
    config = json.dumps(kept, sort_keys=True, default=str)
    return fingerprint({
        "backend": "vllm",
        "checkpoint": checkpoint_digest(folder),
        "dtype": str(dtype),
        "kv_cache_dtype": str(kv_cache_dtype),
        "quantization": quantization,
        "hf_config": hashlib.blake2b(config.encode(), digest_size=16).hexdigest(),
        "revision": revision,
    })


def engine_fingerprint(vllm_config: Any) -> Fingerprint:
    """:func:`vllm_fingerprint` of the checkpoint and settings of a vLLM engine's ``VllmConfig``."""
    model = vllm_config.model_config
    return vllm_fingerprint(model.model, dtype=str(model.dtype),
                            kv_cache_dtype=str(vllm_config.cache_config.cache_dtype),
                            quantization=model.quantization, hf_config=model.hf_config.to_dict(),
                            revision=model.revision)
