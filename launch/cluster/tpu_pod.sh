#!/bin/bash
# Train on a Cloud TPU VM pod slice: prepare every worker, then one JAX process per worker.
#
#   launch/cluster/tpu_pod.sh setup TPU_NAME ZONE
#   launch/cluster/tpu_pod.sh train TPU_NAME ZONE configs/ntu.py:split=xsub60 gs://bucket/w/ntu60 [--config.x=y ...]
#
# setup: ships this checkout's committed tree (git archive HEAD) to ~/deform3d on every worker
# and installs it there in a virtualenv with the TPU and data extras (pip install -e '.[tpu,data]').
# Run it again after each commit you want on the slice. train: the same launch/train.py command
# on every worker; JAX finds the slice's workers itself (deform3d/train/distributed.py). The
# workdir and config.dataset.data_dir must be reachable by all workers (a GCS bucket).
# DRY_RUN=1 prints each command instead of running it (no network, no gcloud needed).
set -euo pipefail
usage() { sed -n '2,6p' "$0" >&2; exit 2; }
[[ $# -ge 3 ]] || usage
STEP=$1 TPU=$2 ZONE=$3
shift 3
REPO=$(cd "$(dirname "$0")/../.." && pwd)
REMOTE=${REMOTE_DIR:-deform3d}

run() {
  if [[ ${DRY_RUN:-0} == 1 ]]; then printf '%q ' "$@"; echo; else "$@"; fi
}
on_all_workers() {
  run gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command "$1"
}

case $STEP in
  setup)
    [[ $# -eq 0 ]] || usage
    archive=${TMPDIR:-/tmp}/deform3d-$(git -C "$REPO" rev-parse --short HEAD).tar.gz
    run git -C "$REPO" archive --format=tar.gz -o "$archive" HEAD
    run gcloud compute tpus tpu-vm scp "$archive" "$TPU:~/deform3d.tar.gz" --zone "$ZONE" --worker=all
    on_all_workers "set -e; mkdir -p ~/$REMOTE && tar -xzf ~/deform3d.tar.gz -C ~/$REMOTE && cd ~/$REMOTE && { [ -x .venv/bin/python ] || python3 -m venv .venv; } && .venv/bin/pip install -q --upgrade pip && .venv/bin/pip install -q -e '.[tpu,data]' && .venv/bin/python -c 'import jax; print(jax.process_index(), jax.device_count(), jax.devices()[0].device_kind)'"
    ;;
  train)
    [[ $# -ge 2 ]] || usage
    CONFIG=$1 WORKDIR=$2
    shift 2
    args=$(printf ' %q' "$@")
    on_all_workers "cd ~/$REMOTE && . .venv/bin/activate && python launch/train.py --config $(printf '%q' "$CONFIG") --workdir $(printf '%q' "$WORKDIR")$args"
    ;;
  *) usage ;;
esac
