"""Classification metrics on NumPy arrays."""
from __future__ import annotations

import numpy as np


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
  cm = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(cm, (labels, preds), 1)
  return cm


def classification_metrics(logits: np.ndarray, labels: np.ndarray) -> dict:
  """top-1, top-5 and mean class accuracy (mean over classes present of per-class recall)."""
  num_classes = logits.shape[-1]
  order = np.argsort(-logits, axis=-1)
  top1 = float(np.mean(order[:, 0] == labels))
  k = min(5, num_classes)
  top5 = float(np.mean(np.any(order[:, :k] == labels[:, None], axis=1)))
  cm = confusion_matrix(labels, order[:, 0], num_classes)
  support = cm.sum(1)
  present = support > 0
  mean_class = float(np.mean(np.diag(cm)[present] / support[present]))
  return {"top1": top1, "top5": top5, "mean_class_accuracy": mean_class,
          "num_examples": int(labels.shape[0]), "confusion_matrix": cm}
