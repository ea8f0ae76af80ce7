"""Shared fixtures: the offline tiny tokenizer, tiny random models, and a few documents."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tok():
    from block_attention.testing import tiny_tokenizer

    return tiny_tokenizer()


@pytest.fixture(scope="session")
def docs():
    from block_attention import Block

    return [
        Block("The lighthouse of Alexandria stood on the island of Pharos for sixteen centuries.", "pharos",
              title="Pharos", score=0.9),
        Block("Block attention caches each retrieved passage separately and reuses it in any order.", "blocks",
              score=0.7),
        Block("The quick brown fox jumps over the lazy dog; it did so in 1999 and again in 2004.", "fox",
              title="Fox", score=0.5),
    ]


@pytest.fixture(scope="session")
def llama():
    from block_attention.testing import tiny_model

    return tiny_model("llama", seed=0)


@pytest.fixture()
def redis_proc():
    """A private redis-server on a free loopback port, stopped after the test (skipped if not installed)."""
    from block_attention.store.redis_server import RedisProcess, redis_server_path

    if redis_server_path() is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install -y redis-server; .ci/run installs it)")
    with RedisProcess() as proc:
        yield proc
