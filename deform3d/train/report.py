"""Evaluation reports: metrics JSON and a confusion-matrix PNG."""
from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np

from deform3d.train.metrics import per_class_recall


def plot_confusion(cm: np.ndarray, classes: Sequence[str], path: str, title: str = "") -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  n = len(classes)
  norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
  size = max(4.0, 0.45 * n + 2)
  fig, ax = plt.subplots(figsize=(size, size))
  im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
  if n <= 30:
    ax.set_xticks(range(n), classes, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), classes, fontsize=8)
    for i in range(n):
      for j in range(n):
        if cm[i, j]:
          ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                  color="white" if norm[i, j] > 0.5 else "black")
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  ax.set_title(title)
  fig.colorbar(im, ax=ax, fraction=0.046)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write(metrics: dict, classes: Sequence[str], out_dir: str) -> str:
  """Writes ``metrics.json`` (with the confusion matrix) and ``confusion.png`` to ``out_dir``."""
  os.makedirs(out_dir, exist_ok=True)
  cm = np.asarray(metrics["confusion_matrix"])
  if cm.shape[0] != len(classes):
    raise ValueError(f"confusion matrix has {cm.shape[0]} classes, class list has {len(classes)}")
  summary = {k: metrics[k] for k in ("top1", "top5", "mean_class_accuracy", "num_examples")}
  summary["classes"] = list(classes)
  summary["confusion_matrix"] = cm.tolist()
  with open(os.path.join(out_dir, "metrics.json"), "w") as fh:
    json.dump(summary, fh, indent=1)
  plot_confusion(cm, classes, os.path.join(out_dir, "confusion.png"),
                 f"top-1 {metrics['top1']:.3f}, mean class acc "
                 f"{metrics['mean_class_accuracy']:.3f} (n={metrics['num_examples']})")
  return out_dir


def run_summary(workdir: str, split: str = "test") -> dict:
  """One run's ``eval_{split}/metrics.json``: its seed, top-1, mean class accuracy and lowest
  class (name, accuracy), and the validation top-1 the run logged (``{step: top1}``)."""
  path = os.path.join(workdir, f"eval_{split}", "metrics.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no evaluation of split {split!r} in {workdir} (launch/"
                            "train.py writes it at the end of a run; launch/eval.py for others)")
  with open(path) as fh:
    m = json.load(fh)
  per_class = per_class_recall(np.asarray(m["confusion_matrix"]))
  low = int(np.nanargmin(per_class))  # of the classes the split has
  seed = None
  if os.path.exists(os.path.join(workdir, "config.json")):
    with open(os.path.join(workdir, "config.json")) as fh:
      seed = json.load(fh).get("seed")
  val = {}
  if os.path.exists(os.path.join(workdir, "log.txt")):
    from deform3d.train import curves
    val = dict(curves.parse(workdir)[1])
  return {"workdir": workdir, "seed": seed, "top1": float(m["top1"]),
          "mean_class_accuracy": float(m["mean_class_accuracy"]),
          "lowest_class": m["classes"][low], "lowest_class_accuracy": float(per_class[low]),
          "val_top1": val}


def spread(values: Sequence[float]) -> dict:
  """Median, min and max."""
  v = np.asarray(values, float)
  return {"median": float(np.median(v)), "min": float(v.min()), "max": float(v.max()),
          "runs": len(v)}


def summarize(workdirs: Sequence[str], split: str = "test") -> dict:
  """Runs of one recipe (e.g. seeds 0, 1, 2): each run, and the spread of top-1 and of the
  lowest class's accuracy over them."""
  runs = [run_summary(w, split) for w in workdirs]
  return {"split": split, "runs": runs,
          "top1": spread([r["top1"] for r in runs]),
          "lowest_class_accuracy": spread([r["lowest_class_accuracy"] for r in runs])}


def format_spread(s: dict, digits: int = 3) -> str:
  """``0.996 (0.990-1.000)``: median (min-max)."""
  return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"
