#!/usr/bin/env bash
# The benchmarks to run on a lent accelerator, in one go: writes OUT_DIR/{sampler,paper}.json
# and logs. Usage: bash launch/benchmark_accelerator.sh OUT_DIR [PAPER_BUDGET_S] [BATCH]
set -uo pipefail
out=${1:?usage: benchmark_accelerator.sh OUT_DIR [PAPER_BUDGET_S] [BATCH]}
budget=${2:-330}
batch=${3:-16}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
  python3 -c "import sys, jax, flax, optax; print(sys.version.split()[0], 'jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
} 2>&1 | tee "$out/env.log"
# Sampler gradient variants at the model's layer sizes (torch grid_sample on the same device).
timeout 120 python3 launch/benchmark.py --suite sampler --repeats 20 --out "$out/sampler.json" \
  2>&1 | tee "$out/sampler.log"
# The paper-scale model's whole training step, one process per row.
python3 launch/benchmark.py --suite paper --batch "$batch" --repeats 10 --budget_s "$budget" \
  --out "$out/paper.json" 2>&1 | tee "$out/paper.log"
