"""Default: the embedded procedurally generated dataset (10 classes, no download), CPU-sized."""
from configs.common import base_config


def get_config():
  return base_config()
