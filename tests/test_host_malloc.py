"""deform3d.host_malloc: when the launch scripts restart themselves with glibc's malloc tunables,
and that the tunables remove XLA:CPU's per-execution page faults without changing results."""
import json
import os
import subprocess
import sys

import pytest

from deform3d import host_malloc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_wanted_only_when_asked_on_glibc_and_never_over_the_users_settings():
  linux = dict(platform="linux", glibc=(2, 36))
  on = {"DEFORM3D_HOST_MALLOC": "1"}
  assert host_malloc.wanted(environ=on, **linux)
  assert not host_malloc.wanted(environ={}, **linux)  # opt-in
  assert not host_malloc.wanted(environ={"DEFORM3D_HOST_MALLOC": "0"}, **linux)
  assert not host_malloc.wanted(environ=dict(on, GLIBC_TUNABLES="glibc.malloc.arena_max=4"),
                                **linux)
  assert host_malloc.wanted(environ=dict(on, GLIBC_TUNABLES="glibc.rtld.nns=2"), **linux)
  assert not host_malloc.wanted(environ=on, **dict(linux, platform="darwin"))
  assert not host_malloc.wanted(environ=on, **dict(linux, glibc=(2, 17)))
  assert not host_malloc.wanted(environ=on, **dict(linux, glibc=None))  # e.g. musl


def test_with_tunables_keeps_other_tunables():
  tunables = ":".join(host_malloc.TUNABLES)
  assert host_malloc.with_tunables({})["GLIBC_TUNABLES"] == tunables
  env = host_malloc.with_tunables({"GLIBC_TUNABLES": "glibc.rtld.nns=2", "A": "b"})
  assert env == {"GLIBC_TUNABLES": "glibc.rtld.nns=2:" + tunables, "A": "b"}
  assert host_malloc.env_line() == "GLIBC_TUNABLES=" + tunables


def _run(code, env_update):
  env = {k: v for k, v in os.environ.items()
         if k not in ("GLIBC_TUNABLES", host_malloc.ENABLE)}
  env.update(env_update, PYTHONPATH=ROOT)
  proc = subprocess.run([sys.executable, "-c", code, "--flag"], capture_output=True, text=True,
                        env=env, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-2000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


REEXEC = """
import json, os, sys
from deform3d import host_malloc
host_malloc.maybe_reexec()
print(json.dumps([os.environ.get("GLIBC_TUNABLES"), sys.argv[1:]]))
"""


ON = {host_malloc.ENABLE: "1"}


# What the restarted process must see, written out here rather than taken from the module.
EXPECTED_TUNABLES = ("glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736:"
                     "glibc.malloc.arena_max=1")


def _glibc():
  try:
    return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc ")
  except (ValueError, OSError, AttributeError):
    return False


@pytest.mark.skipif(not (sys.platform == "linux" and _glibc()), reason="needs Linux with glibc")
def test_maybe_reexec_restarts_the_same_command_once():
  tunables, argv = _run(REEXEC, ON)
  assert argv == ["--flag"]
  assert tunables == EXPECTED_TUNABLES
  assert _run(REEXEC, {})[0] is None
  # The user's own malloc tunables win: no restart, theirs untouched.
  assert _run(REEXEC, dict(ON, GLIBC_TUNABLES="glibc.malloc.arena_max=4"))[0] == \
      "glibc.malloc.arena_max=4"


FAULTS = """
import hashlib, json, resource
import jax, jax.numpy as jnp, numpy as np
x = jnp.asarray(np.random.default_rng(0).standard_normal((1 << 14, 256), dtype=np.float32))
w = jnp.asarray(np.random.default_rng(1).standard_normal((256, 256), dtype=np.float32) / 16)
def loss(w, x):
  for _ in range(4):
    x = jnp.tanh(x @ w)
  return (x * x).sum()
f = jax.jit(jax.grad(loss))  # an 80 MB temporary buffer per execution
for _ in range(3):  # the heap reaches its steady state
  f(w, x).block_until_ready()
faults = []
for _ in range(7):  # per call; the median, since heap fragmentation can cost one call a refill
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  y = np.asarray(f(w, x))
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps([float(np.median(faults)), hashlib.sha256(y.tobytes()).hexdigest()]))
"""


@pytest.mark.slow
@pytest.mark.skipif(not host_malloc.wanted(environ=ON), reason="needs Linux with glibc >= 2.26")
def test_tunables_remove_the_page_faults_and_change_no_result():
  faults_default, digest_default = _run(FAULTS, {})
  faults_tuned, digest_tuned = _run(FAULTS, {"GLIBC_TUNABLES": ":".join(host_malloc.TUNABLES)})
  assert digest_tuned == digest_default
  assert faults_default > 10_000, faults_default  # > 40 MB of freshly mapped pages per call
  assert faults_tuned < faults_default / 10, (faults_tuned, faults_default)
