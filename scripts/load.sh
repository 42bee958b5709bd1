#!/usr/bin/env bash
# Load test: 200 concurrent clients read question pages and explanation
# lists while the in-process worker is busy generating with the model.
# Prints throughput and latency percentiles; fails if p95 > LOAD_MAX_P95_MS.
set -euo pipefail

DATA_DIR="${RLT_DATA_DIR:-$(pwd)/data}"
TARGET_DIR="${CARGO_TARGET_DIR:-target}"
RLT="$TARGET_DIR/release/rlt"
LOAD="$TARGET_DIR/release/rlt-load"
CLIENTS="${LOAD_CLIENTS:-200}"
SECONDS_TO_RUN="${LOAD_SECONDS:-20}"
THINK_MS="${LOAD_THINK_MS:-1000}"
MAX_P95_MS="${LOAD_MAX_P95_MS:-100}"

source "$(dirname "$0")/throwaway.sh"
work="$(throwaway_dir rlt-load)"
mkdir -p "$work/datasets/champ" "$work/models"
cp "$DATA_DIR/datasets/champ/v0.json" "$work/datasets/champ/"
ln -s "$DATA_DIR/models/SmolLM2-135M-Instruct.Q4_1.gguf" "$work/models/"
throwaway_server "$work" --workers 1
url="$URL"

# Keep the worker busy: a generate job over all of CHAMP with long samples.
json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
model=$(curl -sf "$url/api/v1/models" | json "[0]['id']")
dataset=$(curl -sf "$url/api/v1/datasets" | json "[0]['id']")
exp=$(curl -sf -X POST "$url/api/v1/experiments" -H 'content-type: application/json' \
    -d "{\"name\": \"load\", \"teacher_model_id\": $model, \"student_model_id\": $model, \"dataset_id\": $dataset,
         \"config\": {\"sampling\": {\"num_samples\": 4, \"max_new_tokens\": 512}, \"score_after_generate\": true}}" | json "['id']")
run=$(curl -sf -X POST "$url/api/v1/experiments/$exp/runs" -H 'content-type: application/json' -d '{}' | json "['id']")
job=$(curl -sf -X POST "$url/api/v1/jobs" -H 'content-type: application/json' \
    -d "{\"kind\": \"generate\", \"params\": {\"run_id\": $run}}" | json "['id']")
for _ in $(seq 1 120); do
    [ "$(curl -sf "$url/api/v1/jobs/$job" | json "['status']")" = running ] && break
    sleep 0.5
done
echo "worker busy with generate job $job (run $run)"

# Readers: every client pauses about a second between pages, as people do.
"$LOAD" --url "$url" --clients "$CLIENTS" --seconds "$SECONDS_TO_RUN" --think-ms "$THINK_MS" --max-p95-ms "$MAX_P95_MS"
# Saturation, for the record: the same clients with no pauses at all.
"$LOAD" --url "$url" --clients "$CLIENTS" --seconds 10 --think-ms 0 || true
echo "job $job after the load: $(curl -sf "$url/api/v1/jobs/$job" | json "['status']"), progress $(curl -sf "$url/api/v1/jobs/$job" | json "['progress_done']")"
curl -sf -X POST "$url/api/v1/jobs/$job/cancel" >/dev/null || true
