#!/usr/bin/env bash
# Contract test: schemathesis generates requests for every operation in the
# served OpenAPI document and checks that none gives a 5xx and that every
# status, content type and response body matches what the document says.
set -euo pipefail

DATA_DIR="${RLT_DATA_DIR:-$(pwd)/data}"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
RLT="$TARGET_DIR/release/rlt"
VENV="$DATA_DIR/venv-fuzz"
SCHEMATHESIS_VERSION="4.32.5"
MAX_EXAMPLES="${FUZZ_MAX_EXAMPLES:-40}"

if [ ! -x "$VENV/bin/schemathesis" ] || ! "$VENV/bin/schemathesis" --version | grep -q "$SCHEMATHESIS_VERSION"; then
    echo "installing schemathesis $SCHEMATHESIS_VERSION into $VENV" >&2
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --quiet "schemathesis==$SCHEMATHESIS_VERSION"
fi

# A throwaway server with the demo data, on a free port.
work="$(mktemp -d /tmp/rlt-fuzz.XXXXXX)"
chmod 755 "$work"
mkdir -p "$work/datasets/champ"
cp "$DATA_DIR/datasets/champ/v0.json" "$work/datasets/champ/"
out="$work/serve.out"
RUST_LOG=warn "$RLT" --data-dir "$work" serve --port 0 --workers 0 >"$out" 2>"$work/serve.err" &
server=$!
cleanup() {
    kill -TERM "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq 1 120); do
    url="$(sed -n 's/.*running at \(http[^ ]*\)/\1/p' "$out" | head -n1)"
    [ -n "$url" ] && break
    kill -0 "$server" 2>/dev/null || { cat "$work/serve.err" >&2; exit 1; }
    sleep 0.5
done
[ -n "$url" ] || { echo "the server did not start" >&2; exit 1; }

"$VENV/bin/schemathesis" run "${url%/}/api/v1/openapi.json" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
    --max-examples "$MAX_EXAMPLES" --workers 2 --no-color
