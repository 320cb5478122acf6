#!/usr/bin/env bash
# The checks before a commit: formatting and clippy with warnings as errors (as .ci/run runs them).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --check
cargo clippy --release --all-targets --quiet -- -D warnings
