"""Plot training loss and evaluation top-1 of one or more runs into a PNG.

``python launch/plot_curves.py --out curves.png NAME=WORKDIR_OR_LOG [NAME=...]``

Reads the progress lines the trainer writes (``WORKDIR/log.txt``, or any saved console log):
``step S/N | loss L | ...`` and ``eval at step S: top1 A | ...``.
"""
import argparse
import os
import re

STEP = re.compile(r"^step (\d+)/\d+ \| loss ([0-9.eE+-]+|nan|inf)")
EVAL = re.compile(r"^eval at step (\d+): top1 ([0-9.]+)")


def parse(path: str):
  if os.path.isdir(path):
    path = os.path.join(path, "log.txt")
  loss, top1 = [], []
  with open(path) as fh:
    for line in fh:
      if m := STEP.match(line):
        loss.append((int(m[1]), float(m[2])))
      elif m := EVAL.match(line):
        top1.append((int(m[1]), float(m[2])))
  if not loss:
    raise ValueError(f"{path}: no 'step S/N | loss L' lines found")
  return loss, top1


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("runs", nargs="+", help="NAME=WORKDIR_OR_LOG")
  parser.add_argument("--out", required=True)
  args = parser.parse_args()
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
  for run in args.runs:
    name, _, path = run.partition("=")
    loss, top1 = parse(path)
    ax1.plot(*zip(*loss), label=name)
    if top1:
      ax2.plot(*zip(*top1), marker="o", label=name)
  ax1.set_xlabel("step"), ax1.set_ylabel("training loss"), ax1.legend()
  ax2.set_xlabel("step"), ax2.set_ylabel("validation top-1"), ax2.set_ylim(0, 1.02)
  ax2.legend(), ax2.grid(alpha=0.3), ax1.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(args.out, dpi=110)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
