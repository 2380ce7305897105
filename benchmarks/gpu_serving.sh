#!/usr/bin/env bash
# Serving benchmark on a GPU machine: one prepared script.
#
#   bash benchmarks/gpu_serving.sh            # from the repository root, on a machine with an NVIDIA GPU
#
# Creates a virtual environment ($VENV, default /tmp/tfode-gpu-venv), installs
# tensorflow[and-cuda] at the version the CPU numbers in benchmarks/RESULTS.md
# used ($TF_VERSION, default 2.21.0) and this repository (pip install -e .),
# prints nvidia-smi and the GPUs TensorFlow sees, then runs
# `python -m benchmarks.run serving` (not pinned: --no-pin) on the committed export
# savedmodels/latent_ode_spiral, and once more pinned to one CPU core with the
# GPU hidden, on the same machine, as the baseline.
#
# Environment:
#   VENV=...          where to create the virtual environment
#   TF_VERSION=...    tensorflow version to install
#   PIP_ARGS=...      extra pip arguments, e.g. "--no-index --find-links /wheels" offline
#   REGENERATE=1      retrain and re-export the models first (savedmodels/regenerate.py,
#                     into $OUT/savedmodels, on this machine) instead of using the committed exports
#   QUICK=1           pass --quick to the benchmark
#   OUT=...           where results go (default ./gpu_serving_results)
set -euo pipefail

cd "$(dirname "$0")/.."
VENV=${VENV:-/tmp/tfode-gpu-venv}
TF_VERSION=${TF_VERSION:-2.21.0}
PIP_ARGS=${PIP_ARGS:-}
OUT=${OUT:-$PWD/gpu_serving_results}
BENCH_ARGS=()
if [ "${QUICK:-0}" = 1 ]; then BENCH_ARGS+=(--quick); fi
mkdir -p "$OUT"

echo "== venv $VENV"
python3 -m venv "$VENV"
# shellcheck disable=SC2086
"$VENV/bin/pip" install $PIP_ARGS --upgrade pip
# shellcheck disable=SC2086
"$VENV/bin/pip" install $PIP_ARGS "tensorflow[and-cuda]==$TF_VERSION"
# shellcheck disable=SC2086
"$VENV/bin/pip" install $PIP_ARGS -e .
PY="$VENV/bin/python"

echo "== nvidia-smi"
nvidia-smi || echo "nvidia-smi failed"
echo "== TensorFlow devices"
"$PY" - <<'EOF'
import tensorflow as tf
print("tensorflow", tf.__version__, "built with CUDA:", tf.test.is_built_with_cuda())
print("GPUs:", tf.config.list_physical_devices("GPU"))
EOF

MODEL_BASE=savedmodels/latent_ode_spiral
if [ "${REGENERATE:-0}" = 1 ]; then
    echo "== regenerating the exports into $OUT/savedmodels"
    "$PY" savedmodels/regenerate.py --out "$OUT/savedmodels" | tee "$OUT/regenerate.txt"
    MODEL_BASE=$OUT/savedmodels/latent_ode_spiral
fi

echo "== serving benchmark, GPU (not pinned)"
"$PY" -m benchmarks.run serving --no-pin --model-base "$MODEL_BASE" --json "$OUT/serving_gpu.json" ${BENCH_ARGS[@]+"${BENCH_ARGS[@]}"} \
    | tee "$OUT/serving_gpu.md"
echo "== serving benchmark, CPU baseline on this machine (GPU hidden, one pinned core)"
CUDA_VISIBLE_DEVICES="" "$PY" -m benchmarks.run serving --model-base "$MODEL_BASE" --json "$OUT/serving_cpu.json" \
    ${BENCH_ARGS[@]+"${BENCH_ARGS[@]}"} | tee "$OUT/serving_cpu.md"
echo "== results in $OUT"
