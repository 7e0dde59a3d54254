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


# The tests of the trainer's mechanics (devices, processes, kill and resume, evaluation across
# processes) train configs/embedded.py's micro variant (one block, 2 frames of 16 px) on embedded
# records of MICRO_RECORDS; one set of programs, shared by those tests through the session's
# compilation cache (tests/conftest.py).
MICRO_SPLITS = {"train": (40, 2, 11), "val": (20, 1, 12), "test": (20, 1, 13)}
MICRO_RECORDS = {"num_frames": 4, "size": 16}


def embedded_config(data_dir, variant):
  """configs/embedded.py's ``variant``, reading ``data_dir``."""
  from configs import embedded
  c = embedded.get_config(f"variant={variant}")
  c.dataset.data_dir = data_dir
  return c


def micro_config(data_dir):
  """configs/embedded.py's micro variant, reading ``data_dir``."""
  return embedded_config(data_dir, "micro")


def build_micro_data(directory, sizes=None):
  """Embedded records for the micro variant (``MICRO_SPLITS`` unless ``sizes``)."""
  from data_pipelines import embedded
  embedded.build(directory, sizes=sizes or MICRO_SPLITS, verbose=False, **MICRO_RECORDS)
