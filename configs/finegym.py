r"""FineGYM, Gym99 element split (report mean class accuracy), poses from pyskl's HRNet pickle.

  python launch/build_dataset.py --dataset finegym/gym99 --manual_dir RAW
  python launch/train.py --config configs/finegym.py --workdir W

``runlocal``: a tiny model, 32 px, 4 frames and 2 steps (``configs/finegym.py:runlocal=true``).
Model size and schedule are our GPU-scale choices, not values verified against the paper.
"""
import ml_collections

from configs.common import parse_arg, runlocal


def get_config(arg=None):
  arg = parse_arg(arg, runlocal=False)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.workdir_note = ""

  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = "finegym"
  c.dataset.data_dir = "data/tfds/finegym/gym99/1.1.0"  # launch/build_dataset.py output
  c.dataset.train_split = "train"
  c.dataset.eval_split = "test"
  c.dataset.joint_layout = "coco17"  # the joint count follows from it
  c.dataset.max_persons = 1  # the gymnast
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
  c.model.num_classes = 99
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
  c.total_steps = 60000
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
