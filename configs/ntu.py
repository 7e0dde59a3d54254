r"""NTU RGB+D 60 and 120 (docs/datasets.md), one file for the four benchmarks and two pose sources.

  python launch/build_dataset.py --dataset ntu_rgbd_hrnet/ntu60_xsub --manual_dir RAW
  python launch/train.py --config configs/ntu.py:split=xsub60,pose=hrnet --workdir W

``split``: xsub60 | xview60 (NTU 60, report top-1 on test), xsub120 | xset120 (NTU 120).
``pose``: hrnet (pyskl's 2-D HRNet poses, COCO-17; builder ``ntu_rgbd_hrnet``) or kinect (the
``.skeleton`` files, 25 joints; builder ``ntu_rgbd``). ``runlocal``: the same pipeline with a
tiny model, 32 px, 4 frames and 2 steps, to check a build end to end on a laptop.

Model size and schedule are our GPU-scale choices for 224 px, 32-frame clips, not values
verified against the paper (whose settings could not be read, ../shared/paper.md).
"""
import ml_collections

from configs.common import check_choice, parse_arg, runlocal

# split -> (TFDS builder config, classes, training steps)
SPLITS = {"xsub60": ("ntu60_xsub", 60, 60000), "xview60": ("ntu60_xview", 60, 60000),
          "xsub120": ("ntu120_xsub", 120, 100000), "xset120": ("ntu120_xset", 120, 100000)}
# pose -> (TFDS builder, joint layout)
POSES = {"hrnet": ("ntu_rgbd_hrnet", "coco17"), "kinect": ("ntu_rgbd", "ntu25")}


def get_config(arg=None):
  arg = parse_arg(arg, split="xsub60", pose="hrnet", runlocal=False)
  check_choice("split", arg.split, SPLITS)
  check_choice("pose", arg.pose, POSES)
  benchmark, num_classes, total_steps = SPLITS[arg.split]
  builder, layout = POSES[arg.pose]

  c = ml_collections.ConfigDict()
  c.seed = 0
  c.workdir_note = ""

  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = f"ntu{num_classes}"
  c.dataset.data_dir = f"data/tfds/{builder}/{benchmark}/1.1.0"  # launch/build_dataset.py output
  c.dataset.train_split = "train"
  c.dataset.eval_split = "test"      # NTU has no validation split; the benchmarks report test
  c.dataset.joint_layout = layout    # the joint count follows from it
  c.dataset.max_persons = 2          # NTU's interactions (A050-A060, A106-A120) have two people;
                                     # 1 = the one-person ablation
  c.dataset.eval_clips = 5           # clips per video, logits averaged at evaluation
  c.dataset.crop_scale = (0.7, 1.0)  # random square crop, fraction of the short side
  c.dataset.shuffle_buffer = 4096
  c.dataset.cache = False            # too large for memory
  c.dataset.frames_dtype = "uint8"  # pixels to the device, normalized in the jitted step
  # Crops resized in the jitted step, not on the host (docs/data.md): the host decodes and crops
  # only. crop_pad: the largest crop, the records' short side (launch/build_dataset.py's
  # --short_side, 256 by default).
  c.dataset.resize = "device"
  c.dataset.crop_pad = 256
  c.dataset.service = ""  # tf.data service dispatcher (grpc://host:port): docs/scaling.md

  c.num_frames = 32
  c.image_size = 224

  c.model = ml_collections.ConfigDict()
  c.model.variant = "paper"  # sizes: deform3d/models/model.py VARIANTS
  c.model.num_classes = num_classes
  c.model.design = "paper"
  c.model.num_cross_tokens = 1
  c.model.rgb_merge = True
  c.model.rgb_query_pos = "cell"
  c.model.cross_init = "rgb"  # "rgb_pose": the first cross token also starts from pooled pose
  c.model.cross_init_scale = 1.0  # initial scale of its projections (1: lecun normal, 0: zeros)
  c.model.pose_norm = False  # pose features in body-size units, LayerNormed tokens (ours)
  c.model.cross_rgb_scale = ml_collections.config_dict.placeholder(float)  # None: layer_scale
  c.model.use_rgb = True
  c.model.use_pose = True
  c.model.dropout = 0.1
  c.model.attn_dropout = 0.0
  c.model.drop_path = 0.2
  c.model.layer_scale = 0.1
  c.model.fast = True
  c.model.remat = False  # True trades recompute for memory (docs/model.md)
  c.model.sampler_backward = "auto"  # sampler gradient by backend (ops/sampling.py)
  # "pallas": the fused bias + softmax kernel; "auto": that kernel on GPU and TPU, its XLA form on
  # CPU (docs/accelerators.md)
  c.model.attention_kernel = "xla"
  c.model.dtype = "bfloat16"

  c.batch_size = 64  # global
  c.total_steps = total_steps
  c.warmup_steps = 2000
  c.learning_rate = 5e-4
  c.final_lr_fraction = 0.01
  c.weight_decay = 0.05
  c.label_smoothing = 0.1
  c.grad_clip = 1.0
  c.param_sharding = "replicated"
  c.fsdp_min_size = 2**14

  c.log_every = 100
  c.eval_every = 5000
  c.checkpoint_every = 2000
  c.keep_checkpoints = 3
  c.tensorboard = True

  if arg.runlocal:
    runlocal(c)
  return c
