#!/usr/bin/env bash
# Installs the benchmark peers into .venv-bench: llama-cpp-python (built from source by pip: a
# few minutes on 2 cores). `lorafuse bench model` finds it there, or through LORAFUSE_PEER_PYTHON.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-bench
.venv-bench/bin/python -m pip install --quiet --upgrade pip
.venv-bench/bin/python -m pip install --quiet "llama-cpp-python==0.3.36" numpy
echo "setup-bench: .venv-bench ready ($(.venv-bench/bin/python -c 'import llama_cpp; print("llama-cpp-python", llama_cpp.__version__)'))"
