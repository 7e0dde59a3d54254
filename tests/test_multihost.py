"""Two real JAX processes (4 CPU devices each, gloo collectives over localhost) train like one
process with 8 devices fed the same global batches, and evaluate an uneven split like one
process (the micro config: the collectives, sharding and hang-freedom, not accuracy, are under
test)."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from tests import build_micro_data  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "multihost_worker.py")


def free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def record_ids_and_labels(data_dir, split):
  """``(id, label)`` of every record in the split's shards, read with TensorFlow alone (not the
  input pipeline under test)."""
  import glob
  import tensorflow as tf
  spec = {"id": tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature([], tf.int64)}
  out = []
  for f in sorted(glob.glob(os.path.join(data_dir, f"{split}-*-of-*.tfrecord"))):
    for raw in tf.data.TFRecordDataset(f).as_numpy_iterator():
      ex = tf.io.parse_single_example(raw, spec)
      out.append((ex["id"].numpy().decode(), int(ex["label"])))
  assert out, (data_dir, split)
  return out


def env(devices):
  return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
              JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")


def losses(stdout):
  line = [l for l in stdout.splitlines() if l.startswith("LOSSES ")][-1]
  return np.array(json.loads(line[len("LOSSES "):]))


@pytest.mark.heavy
def test_two_processes_match_one_process_eight_devices(micro_data, tmp_path):
  data = micro_data
  port = free_port()
  procs = [subprocess.Popen([sys.executable, WORKER, "multi", data, str(tmp_path / "multi"),
                             str(i), str(port)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env(4), cwd=ROOT) for i in range(2)]
  try:
    outs = [p.communicate(timeout=420) for p in procs]
  finally:
    for p in procs:  # never leave a process behind, even on timeout
      if p.poll() is None:
        p.kill()
        p.wait()
  for p, (o, e) in zip(procs, outs):
    assert p.returncode == 0, e[-4000:]
  ref = subprocess.run([sys.executable, WORKER, "single", data, str(tmp_path / "single")],
                       capture_output=True, text=True, timeout=420, env=env(8), cwd=ROOT)
  assert ref.returncode == 0, ref.stderr[-4000:]
  multi, single = losses(outs[0][0]), losses(ref.stdout)
  assert len(single) == 6 and np.all(np.isfinite(single)) and np.ptp(single) > 1e-3
  np.testing.assert_allclose(multi, single, rtol=2e-4)
  assert "LOSSES" not in outs[1][0]  # only process 0 reports
  # Both processes wrote one checkpoint together (orbax multi-process save).
  assert sorted(os.listdir(tmp_path / "multi" / "checkpoints")) == ["3", "6"]


def _eval_json(stdout):
  line = [l for l in stdout.splitlines() if l.startswith("EVAL ")][-1]
  return json.loads(line[len("EVAL "):])


def _rows_sorted(logits, labels):
  """Logits and labels in an order that does not depend on which process evaluated a clip."""
  logits = np.asarray(logits)
  order = np.lexsort(logits.T[::-1])
  return logits[order], np.asarray(labels)[order]


@pytest.mark.heavy
def test_two_process_evaluation_of_an_uneven_split_matches_one_process(tmp_path):
  """17 validation videos in one shard: process 0 reads 9 (3 batches of 4), process 1 reads 8
  (2 batches). Both must run the same number of evaluation steps (a process that runs out feeds
  masked batches), finish, and give the metrics and per-clip logits of one process."""
  data = str(tmp_path / "data")
  build_micro_data(data, sizes={"train": (8, 1, 11), "val": (17, 1, 12)})
  port = free_port()
  procs = [subprocess.Popen([sys.executable, WORKER, "eval", data, str(i), str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env(1), cwd=ROOT) for i in range(2)]
  try:
    outs = [p.communicate(timeout=300) for p in procs]  # a hang fails here, not forever
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  for p, (o, e) in zip(procs, outs):
    assert p.returncode == 0, e[-4000:]
  ref = subprocess.run([sys.executable, WORKER, "eval", data], capture_output=True, text=True,
                       timeout=300, env=env(1), cwd=ROOT)
  assert ref.returncode == 0, ref.stderr[-4000:]
  multi, single = _eval_json(outs[0][0]), _eval_json(ref.stdout)
  assert multi["processes"] == 2 and single["processes"] == 1
  assert multi["num_examples"] == single["num_examples"] == 17
  # The labels the records hold, read without the pipeline: every video once.
  want = sorted(label for _, label in record_ids_and_labels(data, "val"))
  assert sorted(multi["labels"]) == sorted(single["labels"]) == want
  lm, ym = _rows_sorted(multi["logits"], multi["labels"])
  ls, ys = _rows_sorted(single["logits"], single["labels"])
  np.testing.assert_allclose(lm, ls, rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(ym, ys)
  assert np.ptp(ls[:, 0]) > 1e-2  # the clips' logits differ: the pairing above means something
  for k in ("top1", "top5", "mean_class_accuracy"):
    assert multi[k] == pytest.approx(single[k], abs=1e-9), k
  assert multi["confusion_matrix"] == single["confusion_matrix"]
  assert "EVAL" not in outs[1][0]  # only process 0 reports
