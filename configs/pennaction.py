"""Penn Action (15 classes, 13 annotated joints).

Data: ``python launch/build_dataset.py --dataset penn_action --manual_dir RAW/Penn_Action``.
"""
from configs.common import TFDS_ROOT, paper_dataset_config


def get_config():
  return paper_dataset_config(name="pennaction", data_dir=f"{TFDS_ROOT}/penn_action/default/1.0.0",
                              train_split="train", eval_split="test", joint_layout="penn13",
                              num_classes=15, num_joints=13, total_steps=20000)
