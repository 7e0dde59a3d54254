"""NTU RGB+D 60, cross-subject split. Data: sharded TFRecords in ``data/ntu60_xsub``."""
from configs.common import paper_dataset_config


def get_config():
  return paper_dataset_config(name="ntu60", data_dir="data/ntu60_xsub", train_split="xsub_train",
                              eval_split="xsub_val", joint_layout="coco17", num_classes=60,
                              num_joints=17, total_steps=60000)
