"""PennAction (15 classes, 13 joints). Data: sharded TFRecords in ``data/pennaction``."""
from configs.common import paper_dataset_config


def get_config():
  return paper_dataset_config(name="pennaction", data_dir="data/pennaction", train_split="train",
                              eval_split="test", joint_layout="penn13", num_classes=15,
                              num_joints=13, total_steps=20000)
