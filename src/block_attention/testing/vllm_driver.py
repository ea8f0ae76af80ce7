"""Drive a real vLLM engine with the block-attention connector, in vLLM's own venv (a subprocess of the tests).

``python -m block_attention.testing.vllm_driver SPEC.json OUT.json`` reads::

    {"model": DIR, "store": {StoreConfig fields}, "connector": true, "max_model_len": 4096,
     "steps": [[{"prompt": [ids], "max_tokens": 1, "kv_transfer_params": {...}, "cache_salt": "...",
                 "logprobs": 20}, ...], {"op": "forge", "doc_id": ID, "prompt": [ids]}, ...]}

runs each list step's requests as one ``LLM.generate`` batch (float32, greedy, prefix caching on, eager mode) and
writes ``{"fingerprint": FP, "steps": [[{"token_ids": [...], "logits": [{token_id: raw logit}, ...] per generated
token, "kv_transfer_params": {...}}, ...], ...]}``. Logits are vLLM's raw logits (``logprobs_mode="raw_logits"``)
of the top ``logprobs`` tokens. A ``forge`` step writes a foreign entry (one layer too few) under the key the
connector would use for that block, into the store's disk tier (its result is ``[]``). Only vLLM, torch and this
package's connector are imported (not the engine).
"""

from __future__ import annotations

import json
import sys
from typing import Any

from block_attention.store import CacheKey
from block_attention.vllm_connector.launch import kv_transfer_config


def run(spec: dict[str, Any]) -> dict[str, Any]:
    from vllm import LLM, SamplingParams
    from vllm.config import KVTransferConfig
    from vllm.inputs import TokensPrompt

    kwargs: dict[str, Any] = {}
    if spec.get("connector", True):
        kwargs["kv_transfer_config"] = KVTransferConfig(**kv_transfer_config(spec.get("store", {})))
    llm = LLM(model=spec["model"], dtype="float32", enforce_eager=True, enable_prefix_caching=True,
              max_model_len=int(spec.get("max_model_len", 4096)), logprobs_mode="raw_logits", seed=0, **kwargs)
    from block_attention.store.keys import token_hash
    from block_attention.vllm_connector.fingerprint import engine_fingerprint

    fingerprint = engine_fingerprint(llm.llm_engine.vllm_config)
    steps: list[list[dict[str, Any]]] = []
    for step in spec["steps"]:
        if isinstance(step, dict):
            forge(spec, CacheKey(fingerprint, step["doc_id"], token_hash(step["prompt"])), len(step["prompt"]),
                  llm.llm_engine.vllm_config.model_config)
            steps.append([])
            continue
        prompts, params = [], []
        for req in step:
            prompt = TokensPrompt(prompt_token_ids=list(req["prompt"]))
            if req.get("cache_salt"):
                prompt["cache_salt"] = req["cache_salt"]
            prompts.append(prompt)
            extra = {"kv_transfer_params": req["kv_transfer_params"]} if req.get("kv_transfer_params") else None
            params.append(SamplingParams(temperature=0.0, max_tokens=int(req.get("max_tokens", 1)),
                                         logprobs=req.get("logprobs"), extra_args=extra))
        outputs = llm.generate(prompts, params, use_tqdm=False)
        results = []
        for out in outputs:
            completion = out.outputs[0]
            logits = [{str(tok): lp.logprob for tok, lp in entry.items()} for entry in (completion.logprobs or [])]
            results.append({"token_ids": list(completion.token_ids), "logits": logits,
                            "kv_transfer_params": out.kv_transfer_params})
        steps.append(results)
    return {"fingerprint": fingerprint, "steps": steps}


def forge(spec: dict[str, Any], key: Any, n_tokens: int, model_config: Any) -> None:
    """Put a well-formed entry of the wrong geometry (one layer too few) under ``key`` in the disk tier."""
    import torch

    from block_attention.core.kv import BlockKV
    from block_attention.store import KVStore, StoreConfig

    layers = int(model_config.hf_text_config.num_hidden_layers) - 1
    shape = (layers, int(model_config.get_total_num_kv_heads()), n_tokens, int(model_config.get_head_size()))
    config = StoreConfig(memory_bytes=0, disk_dir=spec["store"]["disk_dir"])
    with KVStore(config) as store:
        store.put(key, BlockKV(torch.ones(shape), torch.ones(shape)))


def main(argv: list[str]) -> int:
    spec_path, out_path = argv
    with open(spec_path) as f:
        spec = json.load(f)
    result = run(spec)
    with open(out_path, "w") as f:
        json.dump(result, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
