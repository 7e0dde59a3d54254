"""glibc malloc settings that stop XLA:CPU from page-faulting its buffers in every step
(docs/performance.md; docs/experiments/2026-11-26-cpu-step-profile).

XLA:CPU allocates the temporary buffer of every execution of a compiled program with ``malloc``
(581 MB for the embedded config's training step). glibc serves a request that large with a fresh
``mmap`` and unmaps it again on ``free``, so every step touches every page of it for the first
time: about 149,000 page faults of 4 KiB each per step. Three glibc tunables keep that memory:
``mmap_max=0`` (never ``mmap``: large blocks come from the heap), ``trim_threshold`` at 64 GiB
(never give the heap back to the kernel) and ``arena_max=1`` (one heap for all threads: XLA
allocates on its own threads, whose arenas could not hold such a block). The next step then
reuses the same pages (31-54 faults per step measured; heap fragmentation can make one step
refill). Results are bit for bit the same. The cost: the process keeps
its peak memory resident until it exits, and all threads share one malloc lock.

Measured (docs/experiments/2026-11-26-cpu-step-profile): the embedded training step alone runs
1.26x faster on one core and 1.12x on two, but the forward pass alone got slower (cause not found)
and the whole training job on the 2-core machine, with the
TensorFlow input pipeline's threads sharing the one heap, did not (1.22 against 1.28 steps/s, one
run each). So it is opt-in: with ``DEFORM3D_HOST_MALLOC=1`` the launch scripts call
``maybe_reexec()`` first, which restarts the same command line once, in the same process
(``execve``), with the tunables added to ``GLIBC_TUNABLES``. It does nothing off Linux/glibc or
when any ``glibc.malloc`` tunable is already set (the user's own choice wins). Setting the
variable by hand works on any glibc system, including for Jupyter: ``env_line()`` prints it.
"""
from __future__ import annotations

import os
import sys

TUNABLES = ("glibc.malloc.mmap_max=0", "glibc.malloc.trim_threshold=68719476736",
            "glibc.malloc.arena_max=1")
ENABLE = "DEFORM3D_HOST_MALLOC"


def glibc_version():
  """``(major, minor)`` of the C library, or ``None`` where it is not glibc."""
  try:
    name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
    major, minor = version.split(".")[:2]
    return (int(major), int(minor)) if name == "glibc" else None
  except (AttributeError, OSError, ValueError, TypeError):
    return None


_DETECT = object()


def wanted(environ=None, platform=None, glibc=_DETECT):
  """Whether ``maybe_reexec`` would restart this process (arguments: for tests; ``glibc`` is a
  version tuple, or ``None`` for another C library)."""
  environ = os.environ if environ is None else environ
  platform = sys.platform if platform is None else platform
  if platform != "linux" or environ.get(ENABLE, "0") != "1":
    return False
  if "glibc.malloc." in environ.get("GLIBC_TUNABLES", ""):
    return False
  glibc = glibc_version() if glibc is _DETECT else glibc
  return glibc is not None and glibc >= (2, 26)  # GLIBC_TUNABLES exists since 2.26


def with_tunables(environ):
  """A copy of ``environ`` with ``TUNABLES`` added to ``GLIBC_TUNABLES`` (colon-separated)."""
  env = dict(environ)
  env["GLIBC_TUNABLES"] = ":".join(t for t in (env.get("GLIBC_TUNABLES"),) + TUNABLES if t)
  return env


def env_line():
  """The shell assignment that sets the tunables, e.g. to start Jupyter with."""
  return "GLIBC_TUNABLES=" + ":".join(TUNABLES)


def maybe_reexec():
  """Restarts this command line with ``TUNABLES`` in ``GLIBC_TUNABLES`` when ``wanted()``;
  otherwise returns. Call it first in a script's ``__main__``."""
  if not wanted() or not getattr(sys, "orig_argv", None):
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable] + list(sys.orig_argv[1:]), with_tunables(os.environ))
