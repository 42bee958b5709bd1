#!/usr/bin/env bash
# Builds the Leptos frontend to wasm for hydration and writes static/pkg/.
# rustup on these machines has no wasm32 target and cannot download one, so
# this uses Debian's rustc-web with its std sources (-Zbuild-std), and a
# wasm-bindgen-cli of exactly the library's version, installed once outside
# the repository.
set -euo pipefail

TOOLS="${RLT_TOOLS_DIR:-$HOME/.cache/rlt-studio-tools}"
TARGET_DIR="${CARGO_TARGET_DIR:-$(pwd)/target}"
WASM_TARGET_DIR="$TARGET_DIR/wasm"
PROFILE=wasm-release

scripts/install-deps.sh wasm

version="$(awk '/^name = "wasm-bindgen"$/{getline; gsub(/"/, "", $3); print $3; exit}' Cargo.lock)"
[ -n "$version" ] || { echo "error: wasm-bindgen is not in Cargo.lock" >&2; exit 1; }
bindgen="$TOOLS/bin/wasm-bindgen"
if [ ! -x "$bindgen" ] || [ "$("$bindgen" --version | awk '{print $2}')" != "$version" ]; then
    echo "installing wasm-bindgen-cli $version into $TOOLS (once; several minutes)" >&2
    CARGO_TARGET_DIR="$TARGET_DIR/tools" cargo install --quiet --root "$TOOLS" wasm-bindgen-cli --version "$version"
fi

# Debian's toolchain must come first; RUSTC_BOOTSTRAP allows -Zbuild-std.
PATH=/usr/bin:$PATH RUSTC=/usr/bin/rustc RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR="$WASM_TARGET_DIR" \
    /usr/bin/cargo build --profile "$PROFILE" -p frontend --lib --no-default-features --features hydrate \
    --target wasm32-unknown-unknown -Zbuild-std=std,panic_abort

out="static/pkg"
mkdir -p "$out"
"$bindgen" --target web --remove-name-section --out-dir "$out" \
    "$WASM_TARGET_DIR/wasm32-unknown-unknown/$PROFILE/frontend.wasm"
# Precompressed copies, served as-is to browsers that accept gzip.
gzip -9 -k -f "$out/frontend_bg.wasm" "$out/frontend.js"
ls -l "$out" >&2
