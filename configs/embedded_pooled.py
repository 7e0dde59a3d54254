"""Ablation on the embedded dataset: the earlier block design (``model.design="pooled"``).

One cross token per frame; the cross and joint tokens query the deformable attention and their
mean output updates the cross token; the RGB tokens are never updated (docs/model.md).
"""
from configs.embedded import get_config as _base


def get_config():
  c = _base()
  c.model.design = "pooled"
  return c
