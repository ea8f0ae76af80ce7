"""Settings of the HTTP server (frozen, validated at construction)."""

from __future__ import annotations

from dataclasses import dataclass

from block_attention.core.checks import is_int
from block_attention.core.errors import ConfigError


@dataclass(frozen=True)
class ServerSettings:
    """How the server answers.

    * ``model_name``: the id listed by ``GET /v1/models`` and echoed in responses (requests may name any model;
      the one loaded answers).
    * ``api_key``: when set, every route but ``/health`` needs ``Authorization: Bearer <api_key>``.
    * ``max_body_bytes``: larger request bodies get 413.
    * ``default_max_tokens``: completion length when a request gives no ``max_tokens``.
    * ``top_k``: passages retrieved per request from the local index (only with ``--index``, and only for a request
      that sends no ``documents`` field at all).
    * ``max_batch``: most concurrent requests whose decode steps run as one batched forward
      (:mod:`block_attention.serving.batching`); ``1`` answers requests one at a time in arrival order.
    """

    model_name: str = "block-attention"
    api_key: str | None = None
    max_body_bytes: int = 8 * 1024**2
    default_max_tokens: int = 256
    top_k: int = 4
    max_batch: int = 8

    def __post_init__(self) -> None:
        if not isinstance(self.model_name, str) or not self.model_name:
            raise ConfigError("ServerSettings.model_name must be a non-empty string; pass the served model's name.")
        if self.api_key is not None and (not isinstance(self.api_key, str) or not self.api_key.strip()):
            raise ConfigError("ServerSettings.api_key must be a non-empty string or None; pass --api-key KEY or "
                              "leave it unset for an open server.")
        for name in ("max_body_bytes", "default_max_tokens", "top_k", "max_batch"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise ConfigError(f"ServerSettings.{name} must be a positive integer, got {value!r}; pass a "
                                  "positive integer.")
