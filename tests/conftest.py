"""Shared pytest setup: quiet logs, CPU only, reproducible random draws."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def rng(request):
  """A NumPy generator seeded from the test's name, so every test draws its own inputs."""
  seed = abs(hash(request.node.nodeid)) % (2**32)
  return np.random.default_rng(seed)
