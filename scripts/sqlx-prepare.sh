#!/usr/bin/env bash
# Regenerates .sqlx/, the offline query data that lets `sqlx::query!` check
# SQL at compile time without a database. sqlx's macros write one file per
# query when SQLX_OFFLINE_DIR is set during an online build, which is all
# `cargo sqlx prepare` does, so no sqlx-cli install is needed.
set -euo pipefail

TARGET_DIR="${CARGO_TARGET_DIR:-target}"
if [ -z "${DATABASE_URL:-}" ]; then
    # A scratch database with the current migrations applied.
    DATABASE_URL="$("$TARGET_DIR/release/rlt" --data-dir "${RLT_DATA_DIR:-data}" db start)"
fi
base="${DATABASE_URL%%\?*}"
query="${DATABASE_URL#"$base"}"
scratch="${base%/*}/rlt_sqlx_prepare${query}"
psql "$DATABASE_URL" -qc "DROP DATABASE IF EXISTS rlt_sqlx_prepare" -qc "CREATE DATABASE rlt_sqlx_prepare" >/dev/null
for f in migrations/*.sql; do
    psql "$scratch" -q -v ON_ERROR_STOP=1 -f "$f" >/dev/null
done

rm -rf .sqlx && mkdir -p .sqlx
# Touch the crates with queries so their macros run again.
find server/src -name '*.rs' -exec touch {} +
SQLX_OFFLINE=false SQLX_OFFLINE_DIR="$PWD/.sqlx" DATABASE_URL="$scratch" \
    cargo check --release --workspace --all-targets
echo "wrote $(ls .sqlx | wc -l) query files to .sqlx/"
