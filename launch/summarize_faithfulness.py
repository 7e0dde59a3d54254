"""Faithfulness of the explanation methods over several models, as median (min-max).

``python launch/summarize_faithfulness.py R1/faithfulness.json R2/... [--json out.json]``

Each input is a report of ``launch/explain.py --faithfulness`` (one trained model each, e.g.
seeds 0, 1, 2); ``deform3d/explain/faithfulness.py: over_runs``. Prints a Markdown table and
each model's ranking of the methods by hit rate and by AUC.
"""
import argparse
import json
import os


from deform3d.explain import faithfulness
from deform3d.train.report import format_spread as fmt


def table(s: dict) -> str:
  ks = s["ks"]
  lines = ["| method | hit rate (chance) | AUC | " + " | ".join(
      f"prob drop, top-{k} (random)" for k in ks) + " |", "|" + " --- |" * (3 + len(ks))]
  for m, r in s["methods"].items():
    lines.append(f"| {m} | {fmt(r['hit_rate'])} ({r['chance']['median']:.3f}) | "
                 f"{fmt(r['auc'])} | " + " | ".join(
                     f"{fmt(r['prob_drop'][k])} ({s['random'][k]['median']:.3f})" for k in ks)
                 + " |")
  return "\n".join(lines) + "\n"


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("reports", nargs="+")
  parser.add_argument("--json", help="also write the summary here")
  args = parser.parse_args()
  reports = []
  for path in args.reports:
    if os.path.isdir(path):
      path = os.path.join(path, "faithfulness.json")
    with open(path) as fh:
      reports.append(json.load(fh))
  s = faithfulness.over_runs(reports)
  print(f"{s['runs']} models, accuracy on the explained clips {fmt(s['accuracy'])}")
  print(table(s))
  for key, ranks in s["ranks"].items():
    for path, order in zip(args.reports, ranks):
      print(f"by {key}: {' > '.join(order)}  ({path})")
  if args.json:
    with open(args.json, "w") as fh:
      json.dump(s, fh, indent=1)


if __name__ == "__main__":
  main()
