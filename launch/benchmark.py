"""Benchmarks, side by side in one run: ``python launch/benchmark.py [--suite ...] [--out F]``.

The harness is ``deform3d/bench/suites.py`` (its docstring lists the suites and options); this
is its command line.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

if __name__ == "__main__":
  from deform3d import host_malloc
  host_malloc.maybe_reexec()  # with DEFORM3D_HOST_MALLOC=1 (docs/performance.md)
  from deform3d.bench import suites
  suites.main()
