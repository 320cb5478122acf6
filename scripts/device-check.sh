#!/usr/bin/env bash
# The whole check on a machine with a real GPU, in well under 10 minutes, printing one table:
#   lorafuse devices; the kernel harness's check and grad modes (tests/kernels.rs) and the matmul
#   and LoRA kernel tests; bench kernels --quick; bench model and bench train (with their CPU peers
#   when their venvs exist).
#
# Built elsewhere and carried (a device machine may have no toolchain and no network):
#   cargo build --release --bin lorafuse && cargo test --release --no-run --test kernels --test matmul --test lora
#   then carry target/release/lorafuse and the test binaries it lists (target/release/deps/kernels-*, ...).
# The default model (98 MB) is over one call's 64 MiB carry: split it (split -b 60M models/X.gguf models/X.part.)
# and carry the parts in two calls; this script joins them. Without a model the model rows are skipped.
#
# Usage: scripts/device-check.sh [OUT_DIR]   (env: LORAFUSE_BIN, LORAFUSE_MODEL, LORAFUSE_BACKEND)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-device-check}}
mkdir -p "$out"
bin=${LORAFUSE_BIN:-target/release/lorafuse}
model=${LORAFUSE_MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
export LORAFUSE_CACHE_DIR="$out/cache"
started=$(date +%s)
declare -a rows

row() { rows+=("| $1 | $2 | $3 |"); echo "== $1: $2 ($3)" >&2; }
# `step NAME LIMIT LOG CMD...`: runs CMD under a time limit into LOG; the row says what became of it
step() {
    local name=$1 limit=$2 log=$3 t rc
    shift 3
    t=$(date +%s)
    timeout "$limit" "$@" > "$log" 2>&1
    rc=$?
    case $rc in
        0) row "$name" "$(grep -E 'tokens/s|ceilings' "$log" | tail -2 | tr '\n' ' ')" "$(elapsed "$t")" ;;
        124) row "$name" "timed out after ${limit}s" "$(elapsed "$t")" ;;
        *) row "$name" "FAILED (exit $rc): $(grep -m1 'error' "$log")" "$(elapsed "$t")" ;;
    esac
}
elapsed() { echo $(( $(date +%s) - $1 ))s; }

if [ ! -f "$model" ] && ls "${model%.gguf}".part.* >/dev/null 2>&1; then
    cat "${model%.gguf}".part.* > "$model.tmp" && mv "$model.tmp" "$model"
fi

t=$(date +%s)
if "$bin" devices --json > "$out/devices.json" 2> "$out/devices.err"; then
    "$bin" devices | tee "$out/devices.txt" >&2
    row devices "$(grep -m1 '^\[0\]' "$out/devices.txt" | cut -c5-)" "$(elapsed "$t")"
else
    row devices "no adapter: $(tail -1 "$out/devices.err")" "$(elapsed "$t")"
fi
# the first adapter must be a real GPU for the numbers to mean anything
if grep -q '"device_type": "CPU' "$out/devices.json" 2>/dev/null && ! grep -q 'discrete GPU\|integrated GPU' "$out/devices.json"; then
    row warning "adapter 0 is a software device" "-"
fi

# the newest build of each test binary (cargo keeps older ones beside it)
for name in kernels matmul lora; do
    t_bin=$(ls -t target/release/deps/"$name"-* 2>/dev/null | grep -v '\.d$' | head -1)
    [ -n "$t_bin" ] && [ -x "$t_bin" ] || continue
    t=$(date +%s)
    if timeout 240 "$t_bin" --test-threads=4 > "$out/test-$name.log" 2>&1; then
        row "tests/$name.rs" "$(grep -m1 '^test result' "$out/test-$name.log")" "$(elapsed "$t")"
    else
        row "tests/$name.rs" "FAILED: $(grep -m3 -E 'panicked|FAILED' "$out/test-$name.log" | tr '\n' ' ')" "$(elapsed "$t")"
    fi
done

step "bench kernels --quick" 240 "$out/kernels.log" "$bin" bench kernels --quick --json "$out/kernels.json" --markdown "$out/kernels.md"
if [ -f "$model" ]; then
    step "bench model" 150 "$out/model.log" "$bin" bench model --model "$model" --json "$out/model.json" --markdown "$out/model.md"
    step "bench train" 150 "$out/train.log" "$bin" bench train --model "$model" --json "$out/train.json" --markdown "$out/train.md"
else
    row "bench model, bench train" "skipped: no $model" "-"
fi

{
    echo "# lorafuse device check ($(date -u +%F), $(elapsed "$started") in all)"
    echo
    echo "| step | result | time |"
    echo "|---|---|---|"
    printf '%s\n' "${rows[@]}"
} | tee "$out/summary.md"
