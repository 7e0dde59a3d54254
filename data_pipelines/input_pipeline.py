"""tf.data input from sharded TFRecords (schema: ``data_pipelines/records.py``) to NumPy batches.

Per example: choose ``T`` frame indices by uniform temporal sampling (train: a random frame in
each of ``T`` equal segments; eval: ``num_clips`` evenly offset clips), decode only those JPEGs,
crop (train: random square of ``crop_scale`` x the short side; eval: centre square), resize to
``image_size``, horizontally flip with probability 1/2 in training (which also negates ``x`` and
swaps left/right joints), and normalize. Keypoints come out as ``(T, J, 3)`` = ``(x, y, score)``
with ``x, y`` in ``[-1, 1]`` relative to the crop (``align_corners=False`` convention); joints with
score 0 are set to ``(0, 0, 0)``.

Randomness is stateless, keyed by ``(seed, example position)``, so the stream is identical for
any parallelism. Each process reads a disjoint part of the data (``process_index`` of
``process_count``) and batches ``global_batch // process_count`` examples.
"""
from __future__ import annotations

import glob
import os
from typing import Iterator, Optional, Sequence

import numpy as np
import tensorflow as tf

# The input pipeline runs on the host: keep TensorFlow off any accelerator JAX will use.
tf.config.set_visible_devices([], "GPU")

MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
STD = np.array([0.229, 0.224, 0.225], np.float32) * 255

_FEATURES = {
    "video/frames": tf.io.VarLenFeature(tf.string),
    "video/height": tf.io.FixedLenFeature([], tf.int64),
    "video/width": tf.io.FixedLenFeature([], tf.int64),
    "pose/keypoints": tf.io.VarLenFeature(tf.float32),
    "pose/scores": tf.io.VarLenFeature(tf.float32),
    "pose/num_joints": tf.io.FixedLenFeature([], tf.int64),
    "label": tf.io.FixedLenFeature([], tf.int64),
    "id": tf.io.FixedLenFeature([], tf.string),
}


def split_files(data_dir: str, split: str) -> list:
  """Shards of ``split``: ours (``{split}-00000-of-NNNNN.tfrecord``) or a TFDS build's
  (``{builder}-{split}.tfrecord-00000-of-NNNNN``); both hold the same schema."""
  files = sorted(glob.glob(os.path.join(data_dir, f"{split}-*-of-*.tfrecord")))
  files = files or sorted(glob.glob(os.path.join(data_dir, f"*-{split}.tfrecord-*-of-*")))
  if not files:
    raise FileNotFoundError(f"no TFRecord shards for split {split!r} in {data_dir} "
                            f"(expected {split}-00000-of-NNNNN.tfrecord or a TFDS build's "
                            f"<name>-{split}.tfrecord-00000-of-NNNNN)")
  return files


def frame_indices(num_available, num_frames: int, offsets):
  """Uniform temporal sampling: index of frame ``i`` is ``floor(seg * (i + offset_i))``.

  ``offsets`` in ``[0, 1)`` with shape ``(..., num_frames)``; ``seg = num_available / num_frames``.
  Short clips (fewer frames than ``num_frames``) repeat frames.
  """
  seg = tf.cast(num_available, tf.float32) / num_frames
  pos = (tf.range(num_frames, dtype=tf.float32) + offsets) * seg
  return tf.minimum(tf.cast(tf.floor(pos), tf.int32), num_available - 1)


def _process(example, index, *, num_frames, image_size, num_joints, train, num_clips, seed,
             flip_perm, crop_scale):
  ex = tf.io.parse_single_example(example, _FEATURES)
  jpegs = tf.sparse.to_dense(ex["video/frames"])
  n = tf.shape(jpegs)[0]
  h = tf.cast(ex["video/height"], tf.int32)
  w = tf.cast(ex["video/width"], tf.int32)
  kp = tf.sparse.to_dense(ex["pose/keypoints"])
  sc = tf.sparse.to_dense(ex["pose/scores"])
  tf.debugging.assert_equal(ex["pose/num_joints"], tf.cast(num_joints, tf.int64), message=(
      f"pose/num_joints does not match the config's num_joints={num_joints}"))
  kp = tf.reshape(kp, [n, num_joints, 2])
  sc = tf.reshape(sc, [n, num_joints])
  key = tf.stack([tf.cast(seed, tf.int64), tf.cast(index, tf.int64)])
  rand = lambda shape, k: tf.random.stateless_uniform(shape, seed=key + [0, k * 1_000_003])

  if train:
    offsets = rand([1, num_frames], 1)
  else:
    offsets = tf.broadcast_to((tf.range(num_clips, dtype=tf.float32)[:, None] + 0.5) / num_clips,
                              [num_clips, num_frames])
  idx = frame_indices(n, num_frames, offsets)  # (K, T)
  k = tf.shape(idx)[0]
  flat = tf.reshape(idx, [-1])
  frames = tf.map_fn(lambda s: tf.io.decode_jpeg(s, channels=3), tf.gather(jpegs, flat),
                     fn_output_signature=tf.uint8)
  frames = tf.ensure_shape(frames, [None, None, None, 3])
  kp = tf.gather(kp, flat)
  sc = tf.gather(sc, flat)

  short = tf.minimum(h, w)
  if train:
    u = rand([3], 2)
    scale = crop_scale[0] + (crop_scale[1] - crop_scale[0]) * u[0]
    size = tf.maximum(tf.cast(tf.cast(short, tf.float32) * scale, tf.int32), 1)
    oy = tf.cast(u[1] * tf.cast(h - size + 1, tf.float32), tf.int32)
    ox = tf.cast(u[2] * tf.cast(w - size + 1, tf.float32), tf.int32)
  else:
    size = short
    oy, ox = (h - size) // 2, (w - size) // 2
  frames = frames[:, oy:oy + size, ox:ox + size]
  frames = tf.image.resize(tf.cast(frames, tf.float32), [image_size, image_size], antialias=True)
  size_f = tf.cast(size, tf.float32)
  x = (2.0 * (kp[..., 0] - tf.cast(ox, tf.float32)) + 1.0) / size_f - 1.0
  y = (2.0 * (kp[..., 1] - tf.cast(oy, tf.float32)) + 1.0) / size_f - 1.0
  if train:
    flip = rand([], 3) < 0.5
    frames = tf.where(flip, tf.reverse(frames, axis=[2]), frames)
    x = tf.where(flip, -x, x)
    perm = tf.constant(flip_perm, tf.int32)
    x = tf.where(flip, tf.gather(x, perm, axis=1), x)
    y = tf.where(flip, tf.gather(y, perm, axis=1), y)
    sc = tf.where(flip, tf.gather(sc, perm, axis=1), sc)
  present = tf.cast(sc > 0, tf.float32)
  keypoints = tf.stack([x * present, y * present, sc], axis=-1)
  frames = (frames - MEAN) / STD
  frames = tf.reshape(frames, [k, num_frames, image_size, image_size, 3])
  keypoints = tf.reshape(keypoints, [k, num_frames, num_joints, 3])
  if train:
    frames, keypoints = frames[0], keypoints[0]
  return {"frames": frames, "keypoints": keypoints,
          "label": tf.cast(ex["label"], tf.int32), "id": ex["id"]}


def make_dataset(data_dir: str, split: str, *, num_frames: int, image_size: int, num_joints: int,
                 batch_size: int, train: bool, seed: int = 0, num_clips: int = 1,
                 flip_perm: Optional[Sequence[int]] = None, crop_scale=(0.7, 1.0),
                 process_index: int = 0, process_count: int = 1, shuffle_buffer: int = 1024,
                 cache: bool = True, epoch_offset: int = 0) -> tf.data.Dataset:
  """Batched ``tf.data.Dataset`` for one process.

  ``batch_size`` is the per-process batch. Training data repeats forever (reshuffled per epoch
  from ``seed``); ``epoch_offset`` starts the reshuffling sequence later, for resumed runs.
  Evaluation data is finite, unshuffled, and its last batch may be smaller.
  """
  files = split_files(data_dir, split)
  if flip_perm is None:
    flip_perm = list(range(num_joints))
  ds = tf.data.Dataset.from_tensor_slices(files)
  if len(files) >= process_count and len(files) % process_count == 0:
    ds = ds.shard(process_count, process_index)
    shard_records = False
  else:
    shard_records = True
  ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=max(1, min(len(files), 8)),
                     num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  if shard_records:
    ds = ds.shard(process_count, process_index)
  if cache:
    ds = ds.cache()
  if train:
    # Seeded reshuffle per epoch; example positions stay unique across epochs for stateless RNG.
    ds = ds.repeat()
    ds = ds.shuffle(shuffle_buffer, seed=seed + epoch_offset, reshuffle_each_iteration=True)
  ds = ds.enumerate()
  fn = lambda i, ex: _process(ex, i, num_frames=num_frames, image_size=image_size,
                              num_joints=num_joints, train=train, num_clips=num_clips,
                              seed=seed + 7919 * epoch_offset, flip_perm=list(flip_perm),
                              crop_scale=crop_scale)
  ds = ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(batch_size, drop_remainder=train)
  return ds.prefetch(tf.data.AUTOTUNE)


def iterate(ds: tf.data.Dataset, batch_size: Optional[int] = None) -> Iterator[dict]:
  """NumPy batches. With ``batch_size``, short batches are zero-padded to it and get a
  ``mask`` (1 = real example), so every batch has the same shape for the jitted step."""
  for batch in ds.as_numpy_iterator():
    n = batch["label"].shape[0]
    batch["mask"] = np.ones((n,), np.float32)
    if batch_size is not None and n < batch_size:
      pad = batch_size - n
      batch = {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)])
               for k, v in batch.items()}
    yield batch
