"""Classification metrics on NumPy arrays."""
from __future__ import annotations

import numpy as np


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
  cm = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(cm, (labels, preds), 1)
  return cm


def per_class_recall(cm: np.ndarray) -> np.ndarray:
  """Each class's recall from a confusion matrix (rows: true class); NaN for a class with no
  examples."""
  support = cm.sum(1)
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(support > 0, np.diag(cm) / support, np.nan)


def classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict:
  """top-1, top-5 and mean class accuracy (mean over classes present of per-class recall)."""
  num_classes = logits.shape[-1]
  order = np.argsort(-logits, axis=-1)
  top1 = float(np.mean(order[:, 0] == labels))
  k = min(5, num_classes)
  top5 = float(np.mean(np.any(order[:, :k] == labels[:, None], axis=1)))
  cm = confusion_matrix(labels, order[:, 0], num_classes)
  mean_class = float(np.nanmean(per_class_recall(cm)))
  return {"top1": top1, "top5": top5, "mean_class_accuracy": mean_class,
          "num_examples": int(labels.shape[0]), "confusion_matrix": cm}
