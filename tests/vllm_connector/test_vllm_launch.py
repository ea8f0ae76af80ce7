"""The launcher's command: vLLM's OpenAI server with the connector, its store, and this package on PYTHONPATH."""

from __future__ import annotations

import json

import pytest

from block_attention.core.errors import ConfigError
from block_attention.vllm_connector import launch


def _config(argv):
    return json.loads(argv[argv.index("--kv-transfer-config") + 1])


def test_cli_builds_vllm_serve_with_the_connector(tmp_path):
    argv, env = launch.cli_command(["--vllm-python", "/v/bin/python", "--model", str(tmp_path), "--port", "8123",
                                    "--disk-dir", str(tmp_path / "kv"), "--redis-url", "redis://10.0.0.5:6379/0",
                                    "--", "--dtype", "float32", "--enforce-eager"])
    assert argv[:3] == ["/v/bin/python", "-m", "vllm.entrypoints.openai.api_server"]
    assert argv[argv.index("--port") + 1] == "8123" and argv[-3:] == ["--dtype", "float32", "--enforce-eager"]
    config = _config(argv)
    assert config["kv_connector"] == "BlockAttentionConnector" and config["kv_role"] == "kv_both"
    assert config["kv_connector_module_path"] == "block_attention.vllm_connector.connector"
    assert config["kv_load_failure_policy"] == "recompute"
    assert config["kv_connector_extra_config"]["store"] == {
        "memory_bytes": 2048 << 20, "disk_bytes": 20 << 30, "disk_dir": str(tmp_path / "kv"),
        "remote_url": "redis://10.0.0.5:6379/0"}
    assert env["PYTHONPATH"].split(":")[0] == str(launch.SRC)
    assert (launch.SRC / "block_attention" / "vllm_connector" / "connector.py").is_file()


def test_a_bad_store_fails_before_vllm_starts(tmp_path):
    with pytest.raises(ConfigError, match="remote_url"):
        launch.serve_command("/v/bin/python", tmp_path, store={"remote_url": "http://nope"})
