"""Configuration of the KV store (memory LRU tier + optional disk tier + optional remote Redis tier).

:class:`StoreConfig` is frozen and validated when constructed: an invalid value raises
:class:`~block_attention.core.errors.ConfigError` with a sentence that names the fix. Nothing here touches the disk or
a device; opening the disk directory happens in :class:`~block_attention.store.tiered.KVStore`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from block_attention.core.checks import is_int, is_number
from block_attention.core.errors import ConfigError
from block_attention.store.codec import check_codec

GiB = 1024**3
MIN_DISK_BYTES = 1024**2  # below this the sqlite index alone would fill the budget



@dataclass(frozen=True)
class StoreConfig:
    """Where and how much block KV is kept.

    * ``memory_bytes``: budget of the in-memory LRU tier (exact sum of tensor bytes); ``0`` disables it.
    * ``disk_dir``: directory of the disk tier (created if missing); ``None`` disables it.
    * ``disk_bytes``: approximate bound of the disk tier (sqlite pages + value files), at least 1 MiB.
    * ``memory_device``: device the memory tier keeps tensors on (e.g. ``"cuda:0"``); ``None`` keeps them where
      they were produced (CPU for entries read back from disk).
    * ``write_behind``: write new entries to the lower tiers (disk, remote) on a background thread instead of in
      the request; ``write_queue`` bounds the queue (when full, the request writes itself). ``KVStore.flush()``
      and ``close()`` wait for every queued write.
    * ``remote_url``: Redis URL of the shared remote tier (``redis://[:PASSWORD@]HOST:PORT/DB``, ``rediss://`` for
      TLS, ``unix://``); ``None`` disables it. ``remote_ttl_s``: optional expiry of remote entries (seconds);
      ``remote_max_value_bytes``: larger entries are not written remotely; ``remote_timeout_s``: socket timeout
      of every Redis call (a slow or down Redis costs at most this, then a miss).
    * ``kv_codec``: how the disk and remote tiers store KV: ``"none"`` (exact, the default) or ``"int8"``
      (:mod:`block_attention.store.codec`: about half the bytes of bf16, a small logit error; the memory tier always
      holds exact KV). ``"none"`` means exact when reading too: an int8 entry (written by another engine on the same
      directory or Redis) is a miss for it, recomputed and overwritten with the exact entry; an ``"int8"`` reader
      serves both. The codec is not part of the key.
    """

    memory_bytes: int = 2 * GiB
    disk_dir: str | os.PathLike[str] | None = None
    disk_bytes: int = 20 * GiB
    memory_device: str | None = None
    write_behind: bool = False
    write_queue: int = 256
    remote_url: str | None = None
    remote_ttl_s: int | None = None
    remote_max_value_bytes: int = 256 * 1024**2
    remote_timeout_s: float = 0.5
    kv_codec: str = "none"

    def __post_init__(self) -> None:
        _check_memory_bytes(self.memory_bytes)
        _check_disk_dir(self.disk_dir)
        _check_disk_bytes(self.disk_bytes)
        _check_memory_device(self.memory_device)
        if not isinstance(self.write_behind, bool):
            raise ConfigError(f"StoreConfig.write_behind must be True or False, got {self.write_behind!r}; pass a bool.")
        if not is_int(self.write_queue) or self.write_queue < 1:
            raise ConfigError(f"StoreConfig.write_queue must be a positive integer, got {self.write_queue!r}; pass "
                              "e.g. write_queue=256.")
        _check_remote(self)
        check_codec(self.kv_codec)

    @property
    def memory_enabled(self) -> bool:
        return self.memory_bytes > 0

    @property
    def disk_enabled(self) -> bool:
        return self.disk_dir is not None

    @property
    def remote_enabled(self) -> bool:
        return self.remote_url is not None


def _check_memory_bytes(value: object) -> None:
    if not is_int(value) or value < 0:  # type: ignore[operator]
        raise ConfigError(
            f"StoreConfig.memory_bytes must be a non-negative integer number of bytes, got {value!r}; "
            "pass e.g. memory_bytes=2 * 1024**3, or 0 to disable the memory tier."
        )


def _check_disk_dir(value: object) -> None:
    if value is None:
        return
    if not isinstance(value, (str, os.PathLike)):
        raise ConfigError(
            f"StoreConfig.disk_dir must be a path (str or os.PathLike) or None, got {type(value).__name__}; "
            "pass a directory path, or None to disable the disk tier."
        )
    path = os.fspath(value)
    if not isinstance(path, str) or not path.strip():
        raise ConfigError(
            "StoreConfig.disk_dir must be a non-empty text path; pass a directory path, or None to disable the "
            "disk tier."
        )
    if os.path.exists(path) and not os.path.isdir(path):
        raise ConfigError(
            f"StoreConfig.disk_dir {path!r} exists but is not a directory; pass a directory path (it is created "
            "if missing), or None to disable the disk tier."
        )


def _check_disk_bytes(value: object) -> None:
    if not is_int(value) or value < MIN_DISK_BYTES:  # type: ignore[operator]
        raise ConfigError(
            f"StoreConfig.disk_bytes must be an integer of at least {MIN_DISK_BYTES} bytes (1 MiB), got {value!r}; "
            "pass e.g. disk_bytes=20 * 1024**3."
        )


def _check_memory_device(value: object) -> None:
    if value is None:
        return
    if not isinstance(value, str):
        raise ConfigError(
            f"StoreConfig.memory_device must be a device string such as 'cpu' or 'cuda:0', or None, got "
            f"{type(value).__name__}; pass str(device)."
        )
    try:
        torch.device(value)
    except (RuntimeError, ValueError) as exc:
        raise ConfigError(
            f"StoreConfig.memory_device {value!r} is not a valid torch device ({exc}); pass e.g. 'cpu' or "
            "'cuda:0', or None to keep tensors where they were produced."
        ) from None


_REMOTE_SCHEMES = ("redis://", "rediss://", "unix://")


def _check_remote(cfg: StoreConfig) -> None:
    url = cfg.remote_url
    if url is not None and (not isinstance(url, str) or not url.startswith(_REMOTE_SCHEMES)):
        raise ConfigError(f"StoreConfig.remote_url must be a Redis URL such as 'redis://127.0.0.1:6379/0', got "
                          f"{url!r}; pass redis://[:PASSWORD@]HOST:PORT/DB, or None to disable the remote tier.")
    ttl = cfg.remote_ttl_s
    if ttl is not None and (not is_int(ttl) or ttl < 1):
        raise ConfigError(f"StoreConfig.remote_ttl_s must be a positive number of seconds or None, got {ttl!r}; "
                          "pass e.g. remote_ttl_s=86400, or None to keep entries until Redis evicts them.")
    cap = cfg.remote_max_value_bytes
    if not is_int(cap) or cap < 1024 or cap > 512 * 1024**2:
        raise ConfigError(f"StoreConfig.remote_max_value_bytes must be an integer between 1 KiB and 512 MiB (Redis's "
                          f"value limit), got {cap!r}; pass e.g. remote_max_value_bytes=256 * 1024**2.")
    timeout = cfg.remote_timeout_s
    if not is_number(timeout) or not 0 < timeout <= 60:
        raise ConfigError(f"StoreConfig.remote_timeout_s must be a number of seconds in (0, 60], got {timeout!r}; "
                          "pass e.g. remote_timeout_s=0.5.")
