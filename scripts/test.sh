#!/usr/bin/env bash
# Runs every test against a throwaway Postgres cluster: each test creates its
# own database in it, so tests run in parallel without seeing each other.
set -euo pipefail

TARGET_DIR="${CARGO_TARGET_DIR:-target}"
RLT="$TARGET_DIR/release/rlt"
source "$(dirname "$0")/throwaway.sh"
throwaway_pg rlt-test-pg
# Compile-time query checks always use the committed .sqlx data.
export SQLX_OFFLINE=true

cargo test --release --workspace "$@"
