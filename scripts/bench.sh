#!/usr/bin/env bash
# `make bench`: speed on this machine, never asserted in tests.
#  1. the engine: teacher-forced f32 scoring and decoding throughput;
#  2. the dashboard: server render time of a question page with 8 scored
#     explanations of 1,000 tokens each (target: p95 under 50 ms);
#  3. the size of the compressed static assets.
set -euo pipefail

TARGET_DIR="${CARGO_TARGET_DIR:-target}"
RLT="$TARGET_DIR/release/rlt"

echo "== engine (cargo run --release -p rlt-engine --example bench)"
cargo run --quiet --release -p rlt-engine --example bench

echo "== question page render (rlt-bench-pages)"
cargo build --quiet --release -p rlt-tests --bin rlt-bench-pages
source "$(dirname "$0")/throwaway.sh"
throwaway_pg rlt-bench-pg 2>/dev/null
"$TARGET_DIR/release/rlt-bench-pages" ${BENCH_PAGES_ARGS:-}

echo "== static assets, gzip -9 (what a browser downloads)"
for f in static/pkg/frontend_bg.wasm static/pkg/frontend.js static/style.css \
         static/vendor/katex/dist/katex.min.js static/vendor/katex/dist/katex.min.css \
         static/vendor/katex/dist/contrib/auto-render.min.js; do
    [ -f "$f" ] || { echo "  $f: missing (make build / make assets)"; continue; }
    printf "  %-48s %8d bytes, %7d gzipped\n" "$f" "$(stat -c %s "$f")" "$(gzip -9 -c "$f" | wc -c)"
done
