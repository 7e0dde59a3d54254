#!/bin/bash
# N JAX processes on this machine (CPU devices, gloo collectives): the multi-host code path
# without a cluster. launch/cluster/local_multiprocess.sh 2 configs/embedded.py /tmp/w2
set -euo pipefail
N=${1:?number of processes}
CONFIG=${2:?config}
WORKDIR=${3:?workdir}
shift 3
PORT=${PORT:-29500}
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
for ((i = 0; i < N; i++)); do
  XLA_FLAGS=--xla_force_host_platform_device_count=${DEVICES_PER_PROCESS:-4} JAX_PLATFORMS=cpu \
    python launch/train.py --config "$CONFIG" --workdir "$WORKDIR" \
    --coordinator_address "localhost:$PORT" --num_processes "$N" --process_id "$i" "$@" &
  pids+=($!)
done
wait "${pids[@]}"
