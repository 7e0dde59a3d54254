#!/bin/bash
# Train on a Cloud TPU pod slice: the same command on every worker (one JAX process each).
#   launch/cluster/tpu_pod.sh TPU_NAME ZONE configs/ntu.py:split=xsub60 gs://bucket/workdirs/ntu60_xsub
# JAX detects the slice's workers itself (deform3d/train/distributed.py); the workdir must be
# reachable by all workers (a GCS bucket), as must config.dataset.data_dir.
set -euo pipefail
TPU=${1:?TPU name}
ZONE=${2:?zone}
CONFIG=${3:?config file}
WORKDIR=${4:?workdir (gs://...)}
shift 4
gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command \
  "cd ~/deform3d && . .venv/bin/activate && python launch/train.py --config $CONFIG --workdir $WORKDIR $*"
