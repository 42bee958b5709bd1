# Sourced by the scripts that need a throwaway database or server; expects
# $RLT (the built `rlt`). Each helper removes what it made on exit.

# A fresh directory under /tmp named after $1. Under root the embedded
# cluster runs as `postgres`, which must be able to enter it.
throwaway_dir() {
    local dir
    dir="$(mktemp -d "/tmp/$1.XXXXXX")"
    chmod 755 "$dir"
    echo "$dir"
}

# An embedded Postgres cluster in a fresh directory: exports DATABASE_URL and
# stops the cluster on exit. Each test creates its own database in it.
throwaway_pg() {
    THROWAWAY_PG_DIR="$(throwaway_dir "$1")"
    trap '"$RLT" --data-dir "$THROWAWAY_PG_DIR" db stop >/dev/null 2>&1 || true; rm -rf "$THROWAWAY_PG_DIR"' EXIT
    DATABASE_URL="$("$RLT" --data-dir "$THROWAWAY_PG_DIR" db start --unsafe-fast)"
    export DATABASE_URL
}

# `rlt serve` on a free port with data dir $1 and the remaining arguments;
# sets URL (no trailing slash) once it answers, and on exit stops the server
# and removes $1.
throwaway_server() {
    THROWAWAY_WORK="$1"
    shift
    # Made here, not by the background redirection: the polling below may
    # run before the server's shell has opened them (a clean CI run failed
    # on "sed: can't read serve.out").
    : >"$THROWAWAY_WORK/serve.out"
    : >"$THROWAWAY_WORK/serve.err"
    RUST_LOG=warn "$RLT" --data-dir "$THROWAWAY_WORK" serve --port 0 "$@" \
        >"$THROWAWAY_WORK/serve.out" 2>"$THROWAWAY_WORK/serve.err" &
    THROWAWAY_SERVER=$!
    trap 'kill -TERM "$THROWAWAY_SERVER" 2>/dev/null || true; wait "$THROWAWAY_SERVER" 2>/dev/null || true; rm -rf "$THROWAWAY_WORK"' EXIT
    URL=""
    for _ in $(seq 1 120); do
        URL="$(sed -n 's/.*running at \(http[^ ]*\)/\1/p' "$THROWAWAY_WORK/serve.out" | head -n1)"
        [ -n "$URL" ] && break
        kill -0 "$THROWAWAY_SERVER" 2>/dev/null || { cat "$THROWAWAY_WORK/serve.err" >&2; exit 1; }
        sleep 0.5
    done
    [ -n "$URL" ] || { echo "the server did not start" >&2; exit 1; }
    URL="${URL%/}"
}
