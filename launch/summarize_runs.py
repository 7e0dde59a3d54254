"""Accuracy of several runs of one recipe (seeds), as median (min-max), with the lowest class.

``python launch/summarize_runs.py WORKDIR [WORKDIR ...] [--split test] [--json out.json]``

Reads each workdir's ``eval_{split}/metrics.json`` (written by ``launch/train.py`` at the end
of a run): ``deform3d/train/report.py: summarize``.
"""
import argparse
import json


from deform3d.train import report


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("workdirs", nargs="+")
  parser.add_argument("--split", default="test")
  parser.add_argument("--json", help="also write the summary here")
  args = parser.parse_args()
  s = report.summarize(args.workdirs, args.split)
  for r in s["runs"]:
    print(f"{r['workdir']}: seed {r['seed']} | top-1 {r['top1']:.3f} | lowest class "
          f"{r['lowest_class']} {r['lowest_class_accuracy']:.3f}")
  print(f"{args.split} top-1 {report.format_spread(s['top1'])} | lowest class "
        f"{report.format_spread(s['lowest_class_accuracy'])} | {len(s['runs'])} runs")
  if args.json:
    with open(args.json, "w") as fh:
      json.dump(s, fh, indent=1)


if __name__ == "__main__":
  main()
