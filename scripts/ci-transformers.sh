#!/usr/bin/env bash
# CI matrix step: run the oracle tests (tests/engine/test_engine.py, tests/hf/test_rope.py) against another transformers
# release in a second environment, so a breaking release is seen before users see it.
#   bash scripts/ci-transformers.sh                 -> the newest transformers release on PyPI (.venv-latest)
#   TRANSFORMERS_SPEC="transformers==5.0.0" BA_VENV=.venv-oldest bash scripts/ci-transformers.sh
# Policy: a failing oracle test FAILS CI (exit 1) with a banner naming the transformers version; only a registry that
# cannot be reached is a skip (exit 0, with a banner), because then nothing was tested.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${BA_VENV:-.venv-latest}
SPEC=${TRANSFORMERS_SPEC:-transformers}
banner() { printf '\n==== transformers matrix (%s): %s ====\n' "$SPEC" "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$VENV"
fi
py="$VENV/bin/python"
pipq() { "$py" -m pip install -q --disable-pip-version-check "$@"; }

if ! "$py" -c "import torch" >/dev/null 2>&1; then
  pipq "${TORCH_SPEC:-torch==2.13.0}"
fi
# Only what the oracle tests import; the project itself without its heavy retrieval dependencies.
pipq -e . --no-deps
pipq "safetensors>=0.4" "numpy>=1.24" "xxhash>=3.0" "tqdm>=4.60" "pytest>=8"
if ! pipq --upgrade "$SPEC"; then
  banner "SKIPPED: could not install $SPEC from the package registry (offline?)"
  exit 0
fi
version=$("$py" -c "import transformers; print(transformers.__version__)")
banner "testing transformers $version"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# A deprecation of an argument we pass is an early warning of the next break: make it an error here.
if "$py" -m pytest -q -p no:cacheprovider tests/engine/test_engine.py tests/hf/test_rope.py \
     -W "error:past_key_values:FutureWarning" "$@"; then
  banner "PASSED with transformers $version"
else
  banner "FAILED with transformers $version: the oracle tests break on this release (see above)"
  exit 1
fi
