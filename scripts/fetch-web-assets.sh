#!/usr/bin/env bash
# Vendors browser assets from the npm registry into static/vendor/ (ignored
# by git): Swagger UI for the API docs page, KaTeX for math in questions. Idempotent: pinned versions are
# fetched once, with the tarball's sha512 checked by npm.
set -euo pipefail

DATA_DIR="${RLT_DATA_DIR:-$(pwd)/data}"
VENDOR="static/vendor"
CACHE="$DATA_DIR/npm"
mkdir -p "$VENDOR" "$CACHE"

# vendor NAME VERSION DEST FILE...: copies package/FILE from the tarball.
vendor() {
    local name="$1" version="$2" dest="$VENDOR/$3"; shift 3
    if [ -f "$dest/.version" ] && [ "$(cat "$dest/.version")" = "$version" ]; then
        return
    fi
    command -v npm >/dev/null || { echo "error: npm is needed to fetch $name" >&2; exit 1; }
    local tgz="$CACHE/$name-$version.tgz"
    if [ ! -f "$tgz" ]; then
        echo "fetching $name@$version from npm" >&2
        (cd "$CACHE" && npm pack --silent "$name@$version" >/dev/null)
    fi
    local tmp; tmp="$(mktemp -d)"
    tar -xzf "$tgz" -C "$tmp"
    rm -rf "$dest" && mkdir -p "$dest"
    for f in "$@"; do
        mkdir -p "$dest/$(dirname "$f")"
        cp -r "$tmp/package/$f" "$dest/$f"
    done
    rm -rf "$tmp"
    echo "$version" > "$dest/.version"
}

vendor swagger-ui-dist 5.35.0 swagger-ui swagger-ui-bundle.js swagger-ui.css LICENSE
vendor katex 0.19.1 katex dist/katex.min.js dist/katex.min.css dist/fonts dist/contrib/auto-render.min.js LICENSE
