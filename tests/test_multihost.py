"""Two real JAX processes (4 CPU devices each, gloo collectives over localhost) train like one
process with 8 devices fed the same global batches."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from data_pipelines import embedded  # noqa: E402
from tests.test_train import TINY_SPLITS  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "multihost_worker.py")


def free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def env(devices):
  return dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
              JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")


def losses(stdout):
  line = [l for l in stdout.splitlines() if l.startswith("LOSSES ")][-1]
  return np.array(json.loads(line[len("LOSSES "):]))


@pytest.mark.heavy
def test_two_processes_match_one_process_eight_devices(tmp_path):
  data = str(tmp_path / "data")
  embedded.build(data, sizes=TINY_SPLITS, num_frames=8, size=32, verbose=False)
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
