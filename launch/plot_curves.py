"""Plot training loss and evaluation top-1 of one or more runs into a PNG.

``python launch/plot_curves.py --out curves.png NAME=WORKDIR_OR_LOG [NAME=...]``

Reads the progress lines the trainer writes (``WORKDIR/log.txt``, or any saved console log):
``deform3d/train/curves.py``. Every training run also writes its own ``WORKDIR/curves.png``.
"""
import argparse


from deform3d.train import curves


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("runs", nargs="+", help="NAME=WORKDIR_OR_LOG")
  parser.add_argument("--out", required=True)
  args = parser.parse_args()
  runs = dict(run.partition("=")[::2] for run in args.runs)
  print(f"wrote {curves.plot(runs, args.out)}")


if __name__ == "__main__":
  main()
