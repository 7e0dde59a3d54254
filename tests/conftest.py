"""Shared pytest setup: quiet logs, CPU only, reproducible random draws, one compilation cache.

Many tests compile the same small programs: the tiny config's training step in every
``launch/train.py`` subprocess of the resume and kill tests, the same model in several test
files. JAX's persistent compilation cache, in a fresh directory per test session that the xdist
workers and every subprocess share (through ``JAX_COMPILATION_CACHE_DIR``), compiles each once.
It changes no result: a cached executable is the one XLA compiled for the same program.
"""
import os
import shutil
import tempfile
import zlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# libtpu (the test extra) loads in any process that compiles for a TPU topology; its lockfile
# would let only one pytest worker at a time do so. Compile-only: no TPU is touched.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

_CACHE_OWNER = False


def pytest_configure(config):
  """The controller (or a run without xdist) makes the cache directory before any worker or
  subprocess starts; they inherit the variables. Set JAX_COMPILATION_CACHE_DIR yourself to keep
  a cache between runs."""
  global _CACHE_OWNER
  config.addinivalue_line("markers", "heavy: a long test, scheduled first")
  config.addinivalue_line("markers", "slow: left out of the quick tier (pytest -m 'not slow'); "
                          "every heavy test is also slow")
  if "JAX_COMPILATION_CACHE_DIR" not in os.environ and "PYTEST_XDIST_WORKER" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="deform3d-jax-cache-")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
    _CACHE_OWNER = True


def pytest_collection_modifyitems(config, items):
  """Tests marked ``heavy`` (a minute or more on the 2-core CI machine) run first, so that
  ``-n 2`` does not end with one worker alone on a long test."""
  items.sort(key=lambda item: item.get_closest_marker("heavy") is None)  # stable
  for item in items:
    if item.get_closest_marker("heavy") is not None:
      item.add_marker(pytest.mark.slow)


def pytest_unconfigure(config):
  if _CACHE_OWNER:
    shutil.rmtree(os.environ.pop("JAX_COMPILATION_CACHE_DIR"), ignore_errors=True)


@pytest.fixture
def rng(request):
  """A NumPy generator seeded from the test's name, so every test draws its own inputs and the
  same ones in every run (crc32, unlike ``hash``, is not randomized per process)."""
  seed = zlib.crc32(request.node.nodeid.encode())
  return np.random.default_rng(seed)
