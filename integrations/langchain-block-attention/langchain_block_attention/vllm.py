"""``BlockAttentionVLLM``: a LangChain text-completion LLM answered by a vLLM server that runs this library's KV
connector (``docs/vllm.md``), so a LangChain app keeps block attention when it moves onto vLLM replicas.

Contract:

* The same call shape as :class:`~langchain_block_attention.BlockAttentionLLM`: the prompt is the final block (the
  question); documents come per call (``llm.invoke(question, documents=[Document, ...])`` or ``.bind``) or as
  block markers in the prompt (:func:`~langchain_block_attention.format_docs`); also ``history``, ``mode``
  (``"full"``: the same tokens as one plain prompt), ``instruction``, ``max_tokens``, ``temperature``, ``top_p``,
  ``top_k``, ``seed``; ``stop`` is sent to vLLM.
* The prompt is rendered by the library's own prompt builder with the served checkpoint's tokenizer (``tokenizer``:
  its folder), so vLLM receives exactly the engine's tokens and block structure
  (:class:`block_attention.vllm_connector.client.VLLMBlockClient`). ``encode`` says how missing passages get
  encoded: ``"missing"`` (default: a miss is answered by vLLM with full attention, then its blocks are encoded so
  the next request hits), ``"first"`` (every block encoded before serving), ``"never"``.
* Each generation's ``generation_info`` holds ``finish_reason`` and ``block_attention``: what the connector did
  (``{"hit": True, "loaded_tokens": N}``, ``{"hit": False, "missing": [...]}``, ...). A fault on the server side is a
  miss computed by vLLM, never a wrong answer; an HTTP failure raises.
* No model or torch is loaded in this process: only the tokenizer, once, on first use.
"""

from __future__ import annotations

from typing import Any, Literal

from block_attention.vllm_connector.client import VLLMBlockClient
from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseLLM
from langchain_core.outputs import Generation, LLMResult
from pydantic import PrivateAttr

from ._params import RequestParams, parse_call_options
from .documents import split_prompt


class BlockAttentionVLLM(RequestParams, BaseLLM):
    """Completion LLM over ``vllm serve`` with the block-attention connector.

    Example::

        from langchain_block_attention import BlockAttentionVLLM
        llm = BlockAttentionVLLM(base_url="http://vllm:8000", model="smollm2", tokenizer="/models/smollm2")
        llm.invoke("Who built the lighthouse?", documents=retrieved_docs)
    """

    base_url: str
    """The vLLM server (``http://host:port``)."""
    model: str
    """Its served model name (``--served-model-name``)."""
    tokenizer: str
    """The served checkpoint folder (its tokenizer renders the prompt exactly as the engine does)."""
    encode: Literal["missing", "first", "never"] = "missing"
    """How missing passages get encoded (see ``VLLMBlockClient``)."""
    timeout_s: float = 600.0
    _client: VLLMBlockClient | None = PrivateAttr(default=None)

    @property
    def _llm_type(self) -> str:
        return "block-attention-vllm"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"base_url": self.base_url, "model_name": self.model, "mode": self.mode, "max_tokens": self.max_tokens,
                "temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k, "seed": self.seed}

    @property
    def client(self) -> VLLMBlockClient:
        if self._client is None:
            self._client = VLLMBlockClient(self.base_url, self.model, self.tokenizer, encode=self.encode,
                                           timeout_s=self.timeout_s)
        return self._client

    def _generate(self, prompts: list[str], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> LLMResult:
        options = parse_call_options(kwargs, self.model)
        generations = []
        for prompt in prompts:
            split = split_prompt(prompt)
            blocks = options.blocks + list(split.blocks)
            settings = self.call_settings(options, bool(blocks))
            done = self.client.complete(
                blocks, split.rest, system=settings["system"], history=options.history,
                mode=settings["mode"] or "block",
                max_tokens=int(options.get("max_tokens", self.max_tokens)),
                temperature=options.get("temperature", self.temperature) or 0.0,
                top_p=options.get("top_p", self.top_p), top_k=options.get("top_k", self.top_k),
                seed=options.get("seed", self.seed), stop=stop if stop is not None else self.stop)
            generations.append([Generation(text=done.text, generation_info={
                "finish_reason": done.finish_reason, "block_attention": done.outcome})])
        return LLMResult(generations=generations, llm_output={"model_name": self.model})
