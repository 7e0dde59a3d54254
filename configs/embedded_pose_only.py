"""Ablation on the embedded dataset: pose only (no RGB stem, no deformable attention)."""
from configs.embedded import get_config as _base


def get_config():
  c = _base()
  c.model.use_rgb = False
  return c
