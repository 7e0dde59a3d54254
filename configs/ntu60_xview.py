"""NTU RGB+D 60, cross-view split. Data: sharded TFRecords in ``data/ntu60_xview``."""
from configs.common import paper_dataset_config


def get_config():
  return paper_dataset_config(name="ntu60", data_dir="data/ntu60_xview", train_split="xview_train",
                              eval_split="xview_val", joint_layout="coco17", num_classes=60,
                              num_joints=17, total_steps=60000)
