"""FineGYM, 99-class element split (report mean class accuracy). Data: sharded TFRecords in ``data/finegym``."""
from configs.common import paper_dataset_config


def get_config():
  return paper_dataset_config(name="finegym", data_dir="data/finegym", train_split="train",
                              eval_split="val", joint_layout="coco17", num_classes=99,
                              num_joints=17, total_steps=60000)
