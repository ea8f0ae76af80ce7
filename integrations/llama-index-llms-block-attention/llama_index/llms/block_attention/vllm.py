"""``BlockAttentionVLLM``: the LlamaIndex LLM of this package answered by a vLLM server that runs this library's KV
connector (``docs/vllm.md``), so a LlamaIndex app keeps block attention when it moves onto vLLM replicas.

Contract:

* Everything :class:`~llama_index.llms.block_attention.BlockAttentionLLM` accepts, it accepts the same way
  (``complete(prompt, nodes=[...], blocks=[...])``, block markers, the nodes of an enclosing stock query or chat
  engine, ``chat(messages)``, ``history``, ``mode``, ``instruction``, sampling options, ``stop``): it is that class
  with the engine call replaced by one HTTP request to vLLM
  (:class:`block_attention.vllm_connector.client.VLLMBlockClient`: the library's prompt builder with the served
  checkpoint's tokenizer renders the exact token layout and block structure).
* ``model_name`` is the served checkpoint folder (its tokenizer and ``config.json`` are read; no weights are
  loaded in this process); ``served_model`` is vLLM's ``--served-model-name``; ``encode`` as in the client.
* Responses carry ``additional_kwargs = {"finish_reason", "stats"}`` where ``stats`` is what the connector did
  (``{"hit": True, "loaded_tokens": N}``, ``{"hit": False, "missing": [...]}``, ...). Streaming yields the whole
  answer as one piece (the connector's outcome comes with a non-streamed response only).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from llama_index.core.bridge.pydantic import Field, PrivateAttr

from block_attention.vllm_connector.client import Completion, VLLMBlockClient, sampling_fields

from .base import BlockAttentionLLM


@dataclass(frozen=True)
class ConnectorStats:
    """The connector's outcome in the place the engine's request stats take."""

    outcome: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.outcome)


@dataclass(frozen=True)
class Answer:
    """One answer in the shape the LLM's response builders read (text, finish reason, stats)."""

    text: str
    finish_reason: str | None
    stats: ConnectorStats

    @classmethod
    def of(cls, done: Completion) -> "Answer":
        return cls(done.text, done.finish_reason, ConnectorStats(done.outcome))


class BlockAttentionVLLM(BlockAttentionLLM):
    """LlamaIndex LLM over ``vllm serve`` with the block-attention connector (see the module docstring).

    Example::

        from llama_index.llms.block_attention.vllm import BlockAttentionVLLM
        llm = BlockAttentionVLLM(base_url="http://vllm:8000", served_model="smollm2", model_name="/models/smollm2")
        llm.complete("Who built the lighthouse?", nodes=retrieved_nodes)
    """

    base_url: str = Field(description="The vLLM server (http://host:port).")
    served_model: str = Field(description="vLLM's --served-model-name.")
    encode: Literal["missing", "first", "never"] = Field(
        default="missing", description="How missing passages get encoded (see VLLMBlockClient).")
    timeout_s: float = 600.0
    _client: VLLMBlockClient | None = PrivateAttr(default=None)

    @classmethod
    def class_name(cls) -> str:
        return "BlockAttentionVLLM"

    @property
    def client(self) -> VLLMBlockClient:
        if self._client is None:
            assert self.model_name is not None  # BlockAttentionLLM requires it
            self._client = VLLMBlockClient(self.base_url, self.served_model, self.model_name, encode=self.encode,
                                           timeout_s=self.timeout_s)
        return self._client

    def _context_positions(self) -> int:
        from transformers import AutoConfig

        return int(AutoConfig.from_pretrained(self.model_name).get_text_config(decoder=True).max_position_embeddings)

    def _run(self, request: dict[str, Any]) -> Answer:  # type: ignore[override]
        done = self.client.complete(request["blocks"], request["question"], system=request["system"],
                                    history=request["history"], mode=request["mode"] or "block",
                                    **sampling_fields(request["generation"]))
        return Answer.of(done)

    def _stream(self, request: dict[str, Any]) -> Iterator[tuple[str, str, Any]]:  # type: ignore[override]
        answer = self._run(request)
        return iter([(answer.text, answer.text, None), (answer.text, "", answer)])
