"""tf.data service on loopback, in the test process: a dispatcher and two workers against the
local pipeline (``data_pipelines/service.py``)."""
import hashlib

import numpy as np
import pytest

from data_pipelines import input_pipeline, records, service
from data_pipelines.skeletons import COCO17, flip_permutation
from tests.test_data import _marker_sample

J = len(COCO17)
N = 10  # clips per epoch


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("service_data"))
  records.write_split(d, "train", (_marker_sample(i)[0] for i in range(N)), num_shards=2,
                      num_classes=3, num_joints=J)
  return d


def _stream(data_dir, start_position=0, service_target=None):
  ds = input_pipeline.make_dataset(
      data_dir, "train", num_frames=4, image_size=16, num_joints=J, batch_size=1, train=True,
      seed=7, flip_perm=flip_permutation(COCO17), crop_scale=(0.5, 0.9), cache=False,
      shuffle_buffer=4, start_position=start_position, frames_dtype="uint8",
      service=service_target)
  return input_pipeline.iterate(ds)


def _key(clip):
  """A clip's identity: its id and the exact bytes of its frames and keypoints (crop, flip and
  sampled frames all show in them)."""
  h = hashlib.sha256(clip["frames"].tobytes() + clip["keypoints"].tobytes()).hexdigest()
  return clip["id"][0].decode(), int(clip["label"][0]), h


@pytest.fixture
def servers():
  dispatcher = service.start_dispatcher()
  workers = [service.start_worker(dispatcher.target) for _ in range(2)]
  yield dispatcher, workers
  for w in workers:
    w.stop()
  dispatcher.stop()


def _local_positions(data_dir, epochs):
  """``{clip key: position}`` of the local pipeline's first ``epochs`` epochs."""
  it = _stream(data_dir)
  out = {}
  for p in range(epochs * N):
    out.setdefault(_key(next(it)), p)
  assert len(out) == epochs * N  # crops differ: every clip of every epoch is its own
  return out


def _positions(it, local, count):
  got = []
  for _ in range(count):
    key = _key(next(it))
    assert key in local, "a clip the local pipeline does not make at any position"
    got.append(local[key])
  return got


def _positions_until(it, local, needed, limit):
  """Positions read from ``it`` until every position in ``needed`` has arrived, at most
  ``limit`` clips. Two workers deliver at their own pace: while one is slow on an epoch, the
  other runs ahead by whole epochs, so how many clips that takes is not fixed."""
  got = []
  while not set(needed) <= set(got):
    assert len(got) < limit, f"missing {sorted(set(needed) - set(got))} after {limit} clips"
    got += _positions(it, local, 1)
  return got


def test_dispatcher_and_two_workers_deliver_each_epoch_exactly(data_dir, servers):
  """Every clip from the service is the local pipeline's clip at some position (identical
  frames and keypoints), none twice, and the first two epochs arrive complete: the same clips
  per epoch as a multiset (the order is not deterministic: epochs go to different workers)."""
  dispatcher, _ = servers
  local = _local_positions(data_dir, 16)  # the workers may run ahead by several epochs
  got = _positions_until(_stream(data_dir, service_target=dispatcher.target), local,
                         range(2 * N), limit=10 * N)
  assert len(set(got)) == len(got), sorted(got)


def test_resumed_service_stream_starts_at_its_position(data_dir, servers):
  """A run resumed at position 13 (epoch 1, record 3) gets exactly positions 13.. of the local
  stream, as a multiset per epoch: the rest of epoch 1, and epoch 2 whole (the skip is the
  first epoch's alone)."""
  dispatcher, _ = servers
  local = _local_positions(data_dir, 16)  # the workers may run ahead by several epochs
  got = _positions_until(_stream(data_dir, 13, dispatcher.target), local, range(13, 3 * N),
                         limit=10 * N)
  assert len(set(got)) == len(got) and min(got) == 13, sorted(got)


def test_a_worker_dying_mid_epoch_is_survived(data_dir, servers):
  """One of the two workers stops after the first clips: the stream goes on from the other
  worker, still the local pipeline's clips, none twice; the epochs the dead worker held may
  have lost clips (at most once)."""
  dispatcher, workers = servers
  local = _local_positions(data_dir, 16)
  it = _stream(data_dir, service_target=dispatcher.target)
  first = _positions(it, local, 3)
  workers[1].stop()
  later = _positions(it, local, 3 * N)
  got = first + later
  assert len(set(got)) == len(got)
  complete = [e for e in range(16) if set(range(e * N, (e + 1) * N)) <= set(got)]
  assert complete, sorted(got)  # whole epochs still arrive, from the surviving worker


@pytest.mark.slow
def test_launch_commands_start_a_dispatcher_and_a_worker(data_dir):
  """``launch/data_service.py dispatcher`` and ``worker`` as separate processes: the training
  stream through them is the local pipeline's clips."""
  import os
  import socket
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  script = os.path.join(root, "launch", "data_service.py")
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  procs = [subprocess.Popen([sys.executable, script, "dispatcher", "--port", str(port)],
                            stdout=subprocess.PIPE, text=True)]
  try:
    assert procs[0].stdout.readline().startswith("dispatcher: grpc://")
    procs.append(subprocess.Popen([sys.executable, script, "worker", "--dispatcher",
                                   f"localhost:{port}"], stdout=subprocess.PIPE, text=True))
    assert "serving" in procs[1].stdout.readline()
    local = _local_positions(data_dir, 4)
    got = _positions(_stream(data_dir, service_target=f"grpc://localhost:{port}"), local, N)
    assert sorted(got) == list(range(N))  # one worker: epoch 0 first, whole
  finally:
    for p in procs:
      p.kill()
      p.wait(timeout=30)


@pytest.mark.slow
def test_service_benchmark_reports_rates(tmp_path):
  """``python -m benchmarks.input_bench --service_workers``: clips/s through worker processes."""
  from benchmarks import input_bench
  d = input_bench.build_embedded_records(str(tmp_path / "embedded"), clips=16)
  row = input_bench.service_clips_per_s(d, "embedded", workers=1, clips=4, rounds=2,
                                        log=lambda s: None)
  assert row["workers"] == 1 and len(row["clips_per_s"]) == 2
  assert 0 < row["min"] <= row["median"] <= row["max"]
