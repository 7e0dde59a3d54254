"""NTU RGB+D 120, cross-subject.

Data: ``python launch/build_dataset.py --dataset ntu_rgbd_hrnet/ntu120_xsub --manual_dir RAW`` (or
``ntu_rgbd/ntu120_xsub`` for Kinect skeletons, then ``--config configs/ntu120_xsub.py:kinect``).
"""
from configs.common import ntu_config


def get_config(pose=None):
  return ntu_config("ntu120_xsub", num_classes=120, total_steps=100000, pose=pose)
