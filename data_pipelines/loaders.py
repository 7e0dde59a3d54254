"""Config -> per-process NumPy batch iterators for ``deform3d.train`` (wires tf.data to JAX)."""
from __future__ import annotations

import jax

from data_pipelines import input_pipeline
from data_pipelines.skeletons import LAYOUTS, flip_permutation


def _common(config):
  layout = config.dataset.joint_layout
  if layout not in LAYOUTS:
    raise ValueError(f"config.dataset.joint_layout={layout!r} is not one of {sorted(LAYOUTS)}")
  pc = jax.process_count()
  if config.batch_size % (pc * jax.local_device_count()):
    raise ValueError(f"config.batch_size={config.batch_size} must be divisible by the "
                     f"{pc * jax.local_device_count()} devices")
  return dict(num_frames=config.num_frames, image_size=config.image_size,
              num_joints=len(LAYOUTS[layout]), batch_size=config.batch_size // pc,
              process_index=jax.process_index(), process_count=pc,
              cache=config.dataset.cache, num_classes=config.model.num_classes,
              max_persons=config.dataset.get("max_persons", 1),
              frames_dtype=config.dataset.get("frames_dtype", "uint8"),
              resize=config.dataset.get("resize", "host"),
              crop_pad=config.dataset.get("crop_pad")), \
      flip_permutation(LAYOUTS[layout])


def describe(config, split: str = None) -> str:
  """Where a run's batches come from: the tf.data service at its address, or this process's
  own pipeline over the records of ``split`` (default: the training split)."""
  split = split or config.dataset.train_split
  where = f"{config.dataset.data_dir} ({split})"
  service = config.dataset.get("service") or None
  if service and split == config.dataset.train_split:
    return f"input: the tf.data service at {service}, reading {where}"
  resize = config.dataset.get("resize", "host")
  return (f"input: the local tf.data pipeline of each process, reading {where}; frames resized "
          f"on the {'accelerator' if resize == 'device' else 'host'}")


def train_iter(config, start_step: int = 0):
  kw, perm = _common(config)
  ds = input_pipeline.make_dataset(
      config.dataset.data_dir, config.dataset.train_split, train=True, seed=config.seed,
      flip_perm=perm, crop_scale=tuple(config.dataset.crop_scale),
      shuffle_buffer=config.dataset.shuffle_buffer, start_position=start_step * kw["batch_size"],
      service=config.dataset.get("service") or None, **kw)
  return input_pipeline.iterate(ds, source=(config.dataset.data_dir, config.dataset.train_split))


def eval_iter(config, split: str = None):
  kw, _ = _common(config)
  split = split or config.dataset.eval_split
  ds = input_pipeline.make_dataset(config.dataset.data_dir, split, train=False,
                                   num_clips=config.dataset.eval_clips, **kw)
  return input_pipeline.iterate(ds, kw["batch_size"], source=(config.dataset.data_dir, split))


def input_shapes(config) -> dict:
  """Per-clip shapes ``{"frames": (T, H, W, 3), "keypoints": (T, J, D) or (P, T, J, D)}`` from
  the training split's element spec (nothing is read), for building a model without a batch at
  hand."""
  kw, _ = _common(config)
  ds = input_pipeline.make_dataset(config.dataset.data_dir, config.dataset.train_split,
                                   train=False, num_clips=1, **kw)   # (B, K=1, ...)
  spec = ds.element_spec
  shapes = {k: tuple(spec[k].shape[2:]) for k in ("frames", "keypoints")}
  if kw["resize"] == "device":  # padded crops in the batch, image_size x image_size in the model
    shapes["frames"] = (config.num_frames, config.image_size, config.image_size, 3)
  return shapes
