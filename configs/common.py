"""Defaults shared by every config; each config file's ``get_config()`` starts from these."""
import ml_collections


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.workdir_note = ""  # free text, saved with config.json

  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = "embedded"
  c.dataset.data_dir = "data/embedded"
  c.dataset.train_split = "train"
  c.dataset.eval_split = "val"
  c.dataset.joint_layout = "coco17"
  c.dataset.eval_clips = 2          # clips per video averaged at evaluation
  c.dataset.crop_scale = (0.7, 1.0)  # random square crop, fraction of the short side
  c.dataset.shuffle_buffer = 1024
  c.dataset.cache = True

  c.image_size = 48
  c.keypoint_dim = 3  # (x, y, score)

  c.model = ml_collections.ConfigDict(dict(
      num_classes=10, num_frames=8, num_joints=17, embed_dim=64, depth=4, num_heads=4,
      mlp_ratio=2.0, stem_strides=(4, 2), stem_temporal_stride=1, num_groups=2,
      offset_strides=(2, 2, 2), offset_range_factor=2.0, joint_window=4,
      joint_strides=(1, 2, 1, 2), temporal_window=4, temporal_strides=(1, 2, 1, 2),
      dropout=0.0, attn_dropout=0.0, drop_path=0.1, layer_scale=0.1, use_rgb=True, use_pose=True,
      # "paper": RGB tokens and cross-modal tokens are the deformable attention's queries and
      # are updated every block; "pooled": the earlier design (ablation), docs/model.md.
      design="paper", num_cross_tokens=1, rgb_merge=True,
      fast=True,    # speed rewrites of deform3d/models/fast.py (same parameters and function)
      remat=False,  # recompute each block's activations in the backward pass (less memory)
      dtype="float32"))

  c.batch_size = 32  # global batch, split over devices and processes
  c.total_steps = 1500
  c.warmup_steps = 100
  c.learning_rate = 1e-3
  c.final_lr_fraction = 0.01
  c.weight_decay = 0.05
  c.label_smoothing = 0.1
  c.grad_clip = 1.0
  c.param_sharding = "replicated"  # or "fsdp": shard big arrays over the data axis
  c.fsdp_min_size = 2**14  # arrays with fewer elements stay replicated under fsdp

  c.log_every = 50
  c.eval_every = 500
  c.checkpoint_every = 500
  c.keep_checkpoints = 3
  c.tensorboard = True
  return c


def paper_dataset_config(*, name: str, data_dir: str, train_split: str, eval_split: str,
                         joint_layout: str, num_classes: int, num_joints: int,
                         total_steps: int) -> ml_collections.ConfigDict:
  """GPU-scale settings shared by the configs of the paper's datasets.

  Model size and schedule are this codebase's defaults for 224 px, 32-frame clips, not values
  verified against the paper's released settings; data come from the converters (docs/).
  """
  c = base_config()
  c.dataset.name = name
  c.dataset.data_dir = data_dir
  c.dataset.train_split = train_split
  c.dataset.eval_split = eval_split
  c.dataset.joint_layout = joint_layout
  c.dataset.eval_clips = 5
  c.dataset.cache = False
  c.dataset.shuffle_buffer = 4096
  c.image_size = 224
  c.model.update(num_classes=num_classes, num_joints=num_joints, num_frames=32, embed_dim=256,
                 depth=8, num_heads=8, stem_strides=(8, 2), stem_temporal_stride=2,
                 joint_window=5, joint_strides=(1, 2, 1, 2, 1, 2, 1, 2),
                 temporal_strides=(1, 1, 2, 1, 1, 2, 1, 1), dropout=0.1, drop_path=0.2,
                 dtype="bfloat16")
  c.batch_size = 64
  c.total_steps = total_steps
  c.warmup_steps = 2000
  c.learning_rate = 5e-4
  c.log_every = 100
  c.eval_every = 5000
  c.checkpoint_every = 2000
  return c


TFDS_ROOT = "data/tfds"  # launch/build_dataset.py --data_dir default
NTU_POSE_SOURCES = {"hrnet": ("ntu_rgbd_hrnet", "coco17", 17), "kinect": ("ntu_rgbd", "ntu25", 25)}


def ntu_config(split: str, num_classes: int, total_steps: int,
               pose: str = None) -> ml_collections.ConfigDict:
  """NTU RGB+D config for a TFDS build (docs/datasets.md). ``pose``: ``hrnet`` (default; pyskl
  2-D HRNet poses, COCO-17) or ``kinect`` (the .skeleton files, 25 joints); pick it on the
  command line with ``--config configs/ntu60_xsub.py:kinect``."""
  pose = pose or "hrnet"
  if pose not in NTU_POSE_SOURCES:
    raise ValueError(f"NTU pose source {pose!r} is not one of {sorted(NTU_POSE_SOURCES)}")
  builder, layout, joints = NTU_POSE_SOURCES[pose]
  return paper_dataset_config(
      name=f"ntu{num_classes}", data_dir=f"{TFDS_ROOT}/{builder}/{split}/1.0.0",
      train_split="train", eval_split="test", joint_layout=layout, num_classes=num_classes,
      num_joints=joints, total_steps=total_steps)
