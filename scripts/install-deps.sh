#!/usr/bin/env bash
# Installs the system packages RLT Studio needs, only when they are missing.
# Usage: scripts/install-deps.sh [postgres] [chromium]
set -euo pipefail

want=("$@")
[ ${#want[@]} -gt 0 ] || want=(postgres)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "error: need root or sudo to install packages: ${want[*]}" >&2; exit 1; }
    SUDO="sudo"
fi

missing=()
for w in "${want[@]}"; do
    case "$w" in
        postgres)
            ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || missing+=(postgresql)
            ;;
        wasm)
            # Debian's Rust can build wasm32 with -Zbuild-std (see scripts/build-wasm.sh).
            [ -x /usr/bin/rustc ] && /usr/bin/rustc --version | grep -q . || missing+=(rustc-web cargo-web)
            [ -d /usr/lib/rustlib/src/rust ] || missing+=(rust-web-src)
            command -v wasm-ld-19 >/dev/null || missing+=(lld-19)
            ;;
        chromium)
            command -v chromium >/dev/null || missing+=(chromium)
            command -v chromedriver >/dev/null || missing+=(chromium-driver)
            ;;
        *) echo "unknown dependency $w" >&2; exit 2 ;;
    esac
done

if [ ${#missing[@]} -gt 0 ]; then
    echo "installing system packages: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
