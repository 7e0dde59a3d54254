"""NTU RGB+D 120, cross-setup.

Data: ``python launch/build_dataset.py --dataset ntu_rgbd_hrnet/ntu120_xset --manual_dir RAW`` (or
``ntu_rgbd/ntu120_xset`` for Kinect skeletons, then ``--config configs/ntu120_xset.py:kinect``).
"""
from configs.common import ntu_config


def get_config(pose=None):
  return ntu_config("ntu120_xset", num_classes=120, total_steps=100000, pose=pose)
