"""Ablation on the embedded dataset: RGB only (joint tokens carry no keypoint values)."""
from configs.embedded import get_config as _base


def get_config():
  c = _base()
  c.model.use_pose = False
  return c
