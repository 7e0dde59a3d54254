"""Compile time of the training step, trees alternated, each compile in a fresh process.

``python launch/compile_time.py --config ntu:split=xsub60 --batch 2 --repeats 3 \
    [--trees OLD_CHECKOUT,.] [--set scan=true] [--out result.json]``

``--step_time scan=false scan=true`` instead times the training step of each variant in one
process, alternated (``--repeats`` rounds of 10 steps).

Library: ``deform3d.bench.compile_time`` (docstring there).
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from deform3d.bench.compile_time import alternated_step_times, compare  # noqa: E402


def _value(text):
  try:
    return json.loads(text)
  except json.JSONDecodeError:
    return text


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="embedded:variant=tiny",
                      help="configs.common.load spec, e.g. ntu:split=xsub60")
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--trees", default=".", help="comma-separated code trees to compare")
  parser.add_argument("--set", action="append", default=[],
                      help="model override KEY=VALUE (JSON value), e.g. scan=false")
  parser.add_argument("--step_time", nargs="+", default=None, metavar="KEY=VALUE[,KEY=VALUE]",
                      help="time the step of each variant instead, alternated")
  parser.add_argument("--out", default=None)
  args = parser.parse_args()
  overrides = dict((kv.split("=", 1)[0], _value(kv.split("=", 1)[1])) for kv in args.set)
  if args.step_time:
    variants = [{**overrides, **dict((kv.split("=", 1)[0], _value(kv.split("=", 1)[1]))
                                     for kv in v.split(","))} for v in args.step_time]
    rows = alternated_step_times(args.config, args.batch, variants, rounds=args.repeats)
    for r in rows:
      print(f"{r['overrides']}: median {r['median_ms']:.1f} ms (min {r['min_ms']:.1f}, "
            f"max {r['max_ms']:.1f})")
    if args.out:
      with open(args.out, "w") as fh:
        json.dump({"spec": args.config, "batch": args.batch, "rows": rows}, fh, indent=1)
    return
  trees = [os.path.abspath(t) for t in args.trees.split(",")]
  result = compare(trees, args.config, args.batch, args.repeats, overrides)
  for tree, s in result["trees"].items():
    print(f"{tree}: median {s['median_s']:.1f} s (min {s['min_s']:.1f}, max {s['max_s']:.1f})")
  if args.out:
    with open(args.out, "w") as fh:
      json.dump(result, fh, indent=1)


if __name__ == "__main__":
  main()
