"""Shared pytest setup: quiet logs, CPU only, reproducible random draws."""
import os
import zlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def rng(request):
  """A NumPy generator seeded from the test's name, so every test draws its own inputs and the
  same ones in every run (crc32, unlike ``hash``, is not randomized per process)."""
  seed = zlib.crc32(request.node.nodeid.encode())
  return np.random.default_rng(seed)
