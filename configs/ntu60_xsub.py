"""NTU RGB+D 60, cross-subject.

Data: ``python launch/build_dataset.py --dataset ntu_rgbd_hrnet/ntu60_xsub --manual_dir RAW`` (or
``ntu_rgbd/ntu60_xsub`` for Kinect skeletons, then ``--config configs/ntu60_xsub.py:kinect``).
"""
from configs.common import ntu_config


def get_config(pose=None):
  return ntu_config("ntu60_xsub", num_classes=60, total_steps=60000, pose=pose)
