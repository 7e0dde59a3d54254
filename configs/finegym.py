"""FineGYM, Gym99 element split (report mean class accuracy).

Data: ``python launch/build_dataset.py --dataset finegym/gym99 --manual_dir RAW``.
"""
from configs.common import TFDS_ROOT, paper_dataset_config


def get_config():
  return paper_dataset_config(name="finegym", data_dir=f"{TFDS_ROOT}/finegym/gym99/1.0.0",
                              train_split="train", eval_split="test", joint_layout="coco17",
                              num_classes=99, num_joints=17, total_steps=60000)
