#!/usr/bin/env bash
# Compile-checks the `cuda` feature (engine and server) on a machine without
# a GPU or a CUDA toolkit. candle's CUDA kernels are compiled to PTX by nvcc
# at build time, so a plain `cargo check --features cuda` needs one: this
# takes NVIDIA's compiler and headers from their PyPI wheels into the data
# directory (once: ~120 MB of wheels, ~340 MB unpacked) and points the build
# at them. Nothing runs on a GPU; that needs one (README, "GPU machines").
#
# The first run compiles candle's kernels (~20 minutes on 2 cores); later
# runs reuse the target directory.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DATA_DIR="${RLT_DATA_DIR:-$ROOT/data}"
PYTHON="${PYTHON:-python3}"
TOOLKIT="$DATA_DIR/cuda-toolkit"
CUDA="$TOOLKIT/nvidia/cu13"
# CUDA 13.4 is the newest cudarc 0.19 knows (CUDARC_CUDA_VERSION below).
# CCCL (Thrust/CUB headers) ships its own version numbers; 13.3.5 is the
# newest on PyPI, and candle's kernels only need its common headers.
WHEELS=(nvidia-cuda-nvcc==13.4.92 nvidia-nvvm==13.4.92 nvidia-cuda-crt==13.4.92
    nvidia-cuda-runtime==13.4.92 nvidia-cuda-cccl==13.3.5.0.6)

# A toolkit unpacked from another list of wheels is replaced whole.
if [ "$(cat "$TOOLKIT/wheels.txt" 2>/dev/null)" != "${WHEELS[*]}" ]; then
    echo "fetching nvcc and the CUDA headers from PyPI into $TOOLKIT" >&2
    rm -rf "$TOOLKIT"
    mkdir -p "$TOOLKIT/wheels"
    "$PYTHON" -m pip download --quiet --no-deps --dest "$TOOLKIT/wheels" "${WHEELS[@]}"
    for wheel in "$TOOLKIT"/wheels/*.whl; do
        "$PYTHON" -m zipfile -e "$wheel" "$TOOLKIT"
    done
    # Wheels do not keep the executable bit.
    chmod +x "$CUDA"/bin/* "$CUDA"/nvvm/bin/*
    rm -rf "$TOOLKIT/wheels"
    echo "${WHEELS[*]}" > "$TOOLKIT/wheels.txt"
fi

export PATH="$CUDA/bin:$PATH" CUDA_HOME="$CUDA"
# No GPU to ask: compile the kernels for Hopper (H100/H200) unless told.
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
export CUDARC_CUDA_VERSION=13040
cd "$ROOT"
cargo check --release -p rlt-engine -p rlt-server --features rlt-server/cuda --all-targets \
    --target-dir "${CUDA_TARGET_DIR:-$ROOT/target/cuda-check}"
echo "the cuda feature compiles (kernels for compute capability $CUDA_COMPUTE_CAP)"
