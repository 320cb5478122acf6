#!/usr/bin/env bash
# Installs the official `openai` Python client into .venv-openai, for scripts/serve_check.py
# (lorafuse serve against a real OpenAI client). Pinned, from PyPI only. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

V=.venv-openai
PINS=(
    openai==3.60.0 httpx2==2.16.2 httpcore2==2.16.2 h11==0.16.0 anyio==4.16.0 idna==3.20
    sniffio==1.3.1 jiter==0.19.0 pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0
    typing-inspection==0.4.5 typing_extensions==4.16.0 truststore==0.10.5
)
if [ -x "$V/bin/python" ] && "$V/bin/python" -c "import openai; assert openai.__version__ == '3.60.0'" 2>/dev/null; then
    exit 0
fi
python3 -m venv "$V"
"$V/bin/pip" install -q --disable-pip-version-check --no-deps "${PINS[@]}"
"$V/bin/python" -c "import openai; print('openai', openai.__version__, 'in $V')"
