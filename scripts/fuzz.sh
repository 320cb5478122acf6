#!/usr/bin/env bash
# Builds the fuzz targets (fuzz/) on stable Rust with the coverage instrumentation cargo-fuzz
# uses, without a sanitizer (that needs nightly), and runs each for SECONDS (default 30) from a
# copy of its seeds (the committed text seeds in fuzz/corpus/<target>, left as they are, and the
# corpus test's good model and adapter files). Exits non-zero on a
# crash, a panic or an error that does not name its file, printing the input that caused it.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-30}"
targets=(gguf safetensors_header peft_config data)
export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares"
# an explicit --target keeps the instrumentation off build scripts and proc macros (they run on
# the host without libFuzzer's hooks), as cargo-fuzz does
triple="$(rustc -vV | sed -n 's/^host: //p')"
cargo build --release --manifest-path fuzz/Cargo.toml --bins --target "$triple"
bin="fuzz/target/$triple/release"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# Seeds that are model weights (the tiny GGUF, model and adapter safetensors) are not committed:
# the corpus test writes its good files as seeds here (it needs the Vulkan driver setup.sh installs).
LORAFUSE_FUZZ_SEEDS="$work/seeds" env -u RUSTFLAGS cargo test --release --test corpus -q > "$work/seeds.log" 2>&1 ||
    { tail -40 "$work/seeds.log"; echo "fuzz: the corpus test that writes the seeds failed"; exit 1; }
status=0
for t in "${targets[@]}"; do
    mkdir -p "$work/$t" "$work/artifacts-$t"
    cp -r "fuzz/corpus/$t/." "$work/$t/" 2>/dev/null || true
    cp -r "$work/seeds/$t/." "$work/$t/"
    seeds=$(find "$work/$t" -type f | wc -l)
    start=$(date +%s)
    if ! "$bin/$t" -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=262144 \
        -artifact_prefix="$work/artifacts-$t/" -print_final_stats=1 "$work/$t" > "$work/$t.log" 2>&1; then
        status=1
        tail -40 "$work/$t.log"
        mkdir -p fuzz/artifacts
        cp "$work/artifacts-$t/"* fuzz/artifacts/ 2>/dev/null || true
        echo "fuzz $t: FAILED; the input is in fuzz/artifacts/ (replay: $bin/$t fuzz/artifacts/<file>)"
    fi
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$work/$t.log" | grep -o '[0-9]*$' || echo "?")
    echo "fuzz $t: $execs runs in $(( $(date +%s) - start )) s from $seeds seeds, corpus now $(find "$work/$t" -type f | wc -l) inputs"
done
exit "$status"
