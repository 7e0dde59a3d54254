"""The training script on 8 simulated CPU devices gives the single-device loss curve (the micro
config: the sharding and its collectives, not accuracy, are under test)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("tensorflow")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.heavy
def test_eight_devices_match_one_device(micro_data, tmp_path):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "multidevice_worker.py"),
                         micro_data, str(tmp_path)], capture_output=True, text=True,
                        timeout=600, env=env, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-4000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith("CURVES ")][-1]
  curves = json.loads(line[len("CURVES "):])
  one = np.array(curves["1dev"])
  assert len(one) == 8 and np.all(np.isfinite(one))
  assert np.ptp(one) > 1e-3  # the loss moves, so agreement is not trivial
  np.testing.assert_allclose(curves["8dev"], one, rtol=2e-4)
  np.testing.assert_allclose(curves["8dev_fsdp"], one, rtol=2e-4)
  assert curves["fsdp_sharded_arrays"] > 10  # FSDP really sharded parameters
