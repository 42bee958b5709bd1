#!/usr/bin/env bash
# Runs every test against a throwaway Postgres cluster: each test creates its
# own database in it, so tests run in parallel without seeing each other.
set -euo pipefail

TARGET_DIR="${CARGO_TARGET_DIR:-target}"
RLT="$TARGET_DIR/release/rlt"
TEST_PG_DIR="$(mktemp -d /tmp/rlt-test-pg.XXXXXX)"
# Under root the cluster runs as `postgres`, which must be able to enter it.
chmod 755 "$TEST_PG_DIR"

cleanup() {
    "$RLT" --data-dir "$TEST_PG_DIR" db stop >/dev/null 2>&1 || true
    rm -rf "$TEST_PG_DIR"
}
trap cleanup EXIT

DATABASE_URL="$("$RLT" --data-dir "$TEST_PG_DIR" db start --unsafe-fast)"
export DATABASE_URL
# Compile-time query checks always use the committed .sqlx data.
export SQLX_OFFLINE=true

cargo test --release --workspace "$@"
