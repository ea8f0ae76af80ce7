"""Fixtures of the server tests: a reference in-process engine, and a real uvicorn server over an identical one."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from block_attention.models import load_engine
from block_attention.serving import ServerSettings, ServerThread, create_app
from server_helpers import Served


@pytest.fixture(scope="session")
def reference() -> Iterator[Any]:
    """The in-process engine every server answer is compared with (same model, same seed, greedy)."""
    engine = load_engine("tiny-random")
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    engine = load_engine("tiny-random")
    app = create_app(engine, ServerSettings(model_name="tiny-random", max_body_bytes=64 * 1024))
    with ServerThread(app) as thread:
        yield Served(thread.base_url, engine, app)
    engine.close()
