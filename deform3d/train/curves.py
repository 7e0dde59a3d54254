"""Training curves from a run's progress lines: parse ``log.txt`` and plot a PNG.

The trainer writes ``step S/N | loss L | ...`` and ``eval at step S: top1 A | ...`` lines to
``WORKDIR/log.txt``; ``trainer.train`` plots them into ``WORKDIR/curves.png`` at the end of
every run, and ``launch/plot_curves.py`` plots several runs side by side.
"""
from __future__ import annotations

import os
import re
from typing import Mapping

STEP = re.compile(r"^step (\d+)/\d+ \| loss ([0-9.eE+-]+|nan|inf)")
EVAL = re.compile(r"^eval at step (\d+): top1 ([0-9.]+)")


def parse(path: str):
  """``(loss, top1)``: lists of ``(step, value)`` from ``path`` (a workdir or a log file).
  A run resumed from a checkpoint repeats steps; the last value of each step is kept."""
  if os.path.isdir(path):
    path = os.path.join(path, "log.txt")
  loss, top1 = {}, {}
  with open(path) as fh:
    for line in fh:
      if m := STEP.match(line):
        loss[int(m[1])] = float(m[2])
      elif m := EVAL.match(line):
        top1[int(m[1])] = float(m[2])
  if not loss:
    raise ValueError(f"{path}: no 'step S/N | loss L' lines found")
  return sorted(loss.items()), sorted(top1.items())


def plot(runs: Mapping[str, str], out: str) -> str:
  """Training loss and validation top-1 against step for ``{name: workdir or log}``."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
  evaluated = False
  for name, path in runs.items():
    loss, top1 = parse(path)
    ax1.plot(*zip(*loss), label=name)
    if top1:
      ax2.plot(*zip(*top1), marker="o", label=name)
      evaluated = True
  ax1.set_xlabel("step"), ax1.set_ylabel("training loss"), ax1.legend()
  ax2.set_xlabel("step"), ax2.set_ylabel("validation top-1"), ax2.set_ylim(0, 1.02)
  if evaluated:
    ax2.legend()
  ax2.grid(alpha=0.3), ax1.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(out, dpi=110)
  plt.close(fig)
  return out
