"""NTU RGB+D 120, cross-subject split. Data: sharded TFRecords in ``data/ntu120_xsub``."""
from configs.common import paper_dataset_config


def get_config():
  return paper_dataset_config(name="ntu120", data_dir="data/ntu120_xsub", train_split="xsub_train",
                              eval_split="xsub_val", joint_layout="coco17", num_classes=120,
                              num_joints=17, total_steps=100000)
