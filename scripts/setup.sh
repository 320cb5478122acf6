#!/usr/bin/env bash
# Everything a fresh machine needs before lorafuse runs: a Vulkan driver (Mesa's lavapipe when
# there is no GPU) and the default model. Idempotent.
set -euo pipefail
cd "$(dirname "$0")"
./setup-vulkan.sh
./fetch-model.sh
