#!/usr/bin/env bash
# Makes sure wgpu finds a Vulkan adapter. On a machine without a GPU that is Mesa's software
# driver, lavapipe. On Debian 12 (bookworm) the bookworm-backports build (Mesa 25) is installed:
# it runs lorafuse's storage-buffer kernels 3-5x faster than bookworm's Mesa 22.3.
# Idempotent; uses sudo when not root. Elsewhere it only reports what it finds.
set -euo pipefail

SUDO=""
if [ "$(id -u)" != 0 ]; then
    SUDO="sudo"
fi

have_lavapipe() {
    ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1 && ldconfig -p | grep -q 'libvulkan\.so\.1'
}

mesa_version() {
    dpkg-query -W -f='${Version}' mesa-vulkan-drivers 2>/dev/null || true
}

if [ -r /etc/os-release ]; then
    . /etc/os-release
fi

if [ "${ID:-}" = debian ] && [ "${VERSION_CODENAME:-}" = bookworm ]; then
    case "$(mesa_version)" in
        25.*|26.*|27.*) echo "setup-vulkan: Mesa $(mesa_version) already installed" ;;
        *)
            # Enable bookworm-backports from the machine's own Debian sources (no mirror named here).
            if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/; then
                if [ -f /etc/apt/sources.list.d/debian.sources ]; then
                    $SUDO sed -i -E '0,/^Suites: bookworm bookworm-updates$/s//Suites: bookworm bookworm-updates bookworm-backports/' \
                        /etc/apt/sources.list.d/debian.sources
                fi
                if ! grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/ && [ -f /etc/apt/sources.list ]; then
                    line=$(grep -E '^deb [^ ]+ bookworm main' /etc/apt/sources.list | head -n 1 || true)
                    if [ -n "$line" ]; then
                        echo "${line/ bookworm / bookworm-backports }" | $SUDO tee /etc/apt/sources.list.d/backports.list >/dev/null
                    fi
                fi
            fi
            $SUDO apt-get update -qq
            # captured first: under pipefail, grep -q closing the pipe early makes apt-cache die of
            # SIGPIPE and the test fail even when backports has the package
            policy=$(apt-cache policy mesa-vulkan-drivers)
            if grep -q 'bpo12' <<<"$policy"; then
                DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq -t bookworm-backports mesa-vulkan-drivers libvulkan1
            else
                echo "setup-vulkan: bookworm-backports not reachable; installing bookworm's Mesa 22.3 (slower kernels)"
                DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mesa-vulkan-drivers libvulkan1
            fi
            ;;
    esac
elif command -v apt-get >/dev/null 2>&1 && ! have_lavapipe; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq mesa-vulkan-drivers libvulkan1
fi

if have_lavapipe; then
    echo "setup-vulkan: Vulkan loader and lavapipe present (mesa-vulkan-drivers $(mesa_version))"
elif ls /usr/share/vulkan/icd.d/*.json >/dev/null 2>&1; then
    echo "setup-vulkan: a Vulkan driver is installed"
else
    echo "setup-vulkan: no Vulkan driver found; install your GPU's driver or Mesa's lavapipe" >&2
    exit 1
fi
