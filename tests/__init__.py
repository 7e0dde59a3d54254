"""Test helpers shared by several test files."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fresh_python(code: str, timeout: int = 300) -> str:
  """Runs ``code`` in a new Python process at the repository root (its ``PYTHONPATH``), for
  checks of what an import loads; asserts that it succeeded and returns its last output line."""
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        timeout=timeout, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout.strip().splitlines()[-1]
