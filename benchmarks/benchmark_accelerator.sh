#!/usr/bin/env bash
# The prepared run for a lent accelerator: one call, at most TOTAL_S seconds with every compile
# (default 460, under the 8 minutes a device check may take). Writes OUT_DIR/{env.log,
# model.json, paper16.json, paper32.json, profile_fused.json, profile_fast.json, *.log,
# timeline.log}. Phases in order of what they decide, each given what is left of TOTAL_S (a
# phase cut short keeps what it wrote; its JSON is written as rows finish):
#   1. model:   the paper model's fwd+bwd step in bf16 at the first batch: JAX fast, JAX fused
#               (attention_kernel=pallas), the torch reference eager and torch.compile (the
#               plain program), timed alternated in one process;
#   2. paper16: the whole training step (optimizer included) at the first batch, fused then fast;
#   3. paper32: the same at the second batch, fused then fast;
#   4. profile: time per module and pass from the GPU trace, fused then fast (the compiled
#               steps of phase 1 come from the compilation cache).
# The GPU's compile target is saved first (gpu_target_config.txt).
# Usage: bash benchmarks/benchmark_accelerator.sh OUT_DIR [TOTAL_S]
# BENCH_SIZE (benchmarks.suites --sizes, default paper), BENCH_SPEC (its config, default
# ntu:split=xsub60) and BENCH_BATCHES (default "16 32") shrink it for a test on CPU.
set -uo pipefail
out=${1:?usage: benchmark_accelerator.sh OUT_DIR [TOTAL_S]}
total=${2:-460}
size=${BENCH_SIZE:-paper}
spec=${BENCH_SPEC:-ntu:split=xsub60}
read -r b1 b2 <<< "${BENCH_BATCHES:-16 32}"
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$out/jax_cache}
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=${JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS:-1}
start=$(date +%s)
left() { echo $(( total - ($(date +%s) - start) )); }
phase() {  # phase NAME COMMAND...: runs under what is left, logs to NAME.log and timeline.log
  local name=$1; shift
  local budget; budget=$(left)
  if (( budget < 20 )); then
    echo "$name: not started, $budget s left" | tee -a "$out/timeline.log"
    return
  fi
  local t0; t0=$(date +%s)
  timeout --signal=TERM --kill-after=10 "$budget" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  echo "$name: rc $rc, $(( $(date +%s) - t0 )) s (budget $budget s)" | tee -a "$out/timeline.log"
  tail -n 15 "$out/$name.log"
}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
  python3 -c "import sys, jax, flax, optax; print(sys.version.split()[0], 'jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
  python3 -c "import torch; print('torch', torch.__version__, torch.cuda.is_available())" 2>&1
} > "$out/env.log" 2>&1
cat "$out/env.log"
# The GPU's compile target: with it, programs for this GPU compile on a CPU host later
# (jax.experimental.topologies), as TPU programs do (docs/accelerators.md).
python3 -c "import jax; from jax._src.lib import xla_client; print(xla_client.get_topology_for_devices(jax.devices('gpu')).target_config)" \
  > "$out/gpu_target_config.txt" 2> "$out/gpu_target_config.log" \
  && echo "gpu_target_config.txt: $(wc -c < "$out/gpu_target_config.txt") bytes"
phase model python3 -m benchmarks.suites --suite model --sizes "$size" --model_batch "$b1" \
  --dtypes bfloat16 --jax_fused --torch_compile --repeats 10 --out "$out/model.json"
phase paper16 python3 -m benchmarks.suites --suite paper --paper_spec "$spec" --batch "$b1" \
  --paper_rows bfloat16/auto/fused,bfloat16/auto/fast --repeats 10 --out "$out/paper16.json"
phase paper32 python3 -m benchmarks.suites --suite paper --paper_spec "$spec" --batch "$b2" \
  --paper_rows bfloat16/auto/fused,bfloat16/auto/fast --repeats 10 --out "$out/paper32.json"
phase profile_fused python3 -m benchmarks.suites --suite profile --sizes "$size" \
  --model_batch "$b1" --dtypes bfloat16 --fused --out "$out/profile_fused.json"
phase profile_fast python3 -m benchmarks.suites --suite profile --sizes "$size" \
  --model_batch "$b1" --dtypes bfloat16 --out "$out/profile_fast.json"
echo "total: $(( $(date +%s) - start )) s of $total" | tee -a "$out/timeline.log"
