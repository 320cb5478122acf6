#!/usr/bin/env bash
# Installs the llama.cpp peer into .venv-bench: llama-cpp-python (built from source by pip: a few
# minutes on 2 cores; needs a C++ compiler, installed here with apt when missing). `lorafuse bench
# model` finds it there, or through LORAFUSE_PEER_PYTHON; scripts/gguf_interop.py runs in it.
# Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v c++ >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
    if command -v apt-get >/dev/null 2>&1; then
        $SUDO apt-get update -qq && $SUDO apt-get install -y -qq g++ >/dev/null
    else
        echo "setup-bench: llama-cpp-python builds from source and needs a C++ compiler (none found)" >&2
        exit 1
    fi
fi
V=.venv-bench
if [ ! -x "$V/bin/python" ]; then
    python3 -m venv "$V"
    echo '*' >"$V/.gitignore"  # keeps the venv out of git status
fi
"$V/bin/python" -m pip install --quiet --disable-pip-version-check "llama-cpp-python==0.3.36" numpy
echo "setup-bench: $V ready ($("$V/bin/python" -c 'import llama_cpp; print("llama-cpp-python", llama_cpp.__version__)'))"
