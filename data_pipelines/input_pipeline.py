"""tf.data input from sharded TFRecords (schema: ``data_pipelines/records.py``) to NumPy batches.

Per example: choose ``T`` frame indices by uniform temporal sampling (train: a random frame in
each of ``T`` equal segments; eval: ``num_clips`` evenly offset clips), decode only those JPEGs,
crop (train: random square of ``crop_scale`` x the short side; eval: centre square), resize to
``image_size``, horizontally flip with probability 1/2 in training (which also negates ``x`` and
swaps left/right joints of every person), and normalize (or, ``frames_dtype="uint8"``, leave the
normalizing to the jitted step; ``resize="device"`` leaves the resize and the mirroring to it as
well). Keypoints come out as ``(T, J, 3)`` = ``(x, y, score)`` (``max_persons=1``: the record's
first person) or ``(P, T, J, 3)`` for ``max_persons=P > 1`` (the record's first ``P`` persons,
padded with all-zero persons), with ``x, y`` in ``[-1, 1]`` relative to the crop
(``align_corners=False`` convention); joints with score 0 are set to ``(0, 0, 0)``.

Randomness is stateless, keyed by ``(seed, example position)``, so the stream is identical for
any parallelism. Each process reads a disjoint part of the data (``process_index`` of
``process_count``) and batches ``global_batch // process_count`` examples.
"""
from __future__ import annotations

import glob
import json
import os
import re
from typing import Iterator, Optional, Sequence

import numpy as np
import tensorflow as tf

from data_pipelines import records
from deform3d.pixels import MEAN, STD  # noqa: F401 (re-export)

# The input pipeline runs on the host: keep TensorFlow off any accelerator JAX will use.
tf.config.set_visible_devices([], "GPU")

FRAME_DTYPES = ("uint8", "float32")
RESIZE = ("host", "device")  # where each crop is resized to image_size


def to_uint8(frames: np.ndarray) -> np.ndarray:
  """Normalized model frames ``(..., 3)`` back to uint8 pixels (for figures); uint8 frames are
  pixels already."""
  frames = np.asarray(frames)
  if frames.dtype == np.uint8:
    return frames
  return np.clip(frames * STD + MEAN, 0, 255).astype(np.uint8)

_FEATURES = records.parse_spec()


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
             flip_perm, crop_scale, num_classes=None, max_persons=1, frames_dtype="float32",
             resize="host", crop_pad=None):
  ex = tf.io.parse_single_example(example, _FEATURES)
  jpegs = tf.sparse.to_dense(ex["video/frames"])
  n = tf.shape(jpegs)[0]
  h = tf.cast(ex["video/height"], tf.int32)
  w = tf.cast(ex["video/width"], tf.int32)
  kp = tf.sparse.to_dense(ex["pose/keypoints"])
  sc = tf.sparse.to_dense(ex["pose/scores"])
  m = tf.cast(ex["pose/num_persons"], tf.int32)
  checks = [
      tf.debugging.assert_equal(ex["pose/num_joints"], tf.cast(num_joints, tf.int64), message=(
          f"pose/num_joints does not match the config's num_joints={num_joints}")),
      tf.debugging.assert_positive(m, message="pose/num_persons must be >= 1"),
      tf.debugging.assert_equal(tf.size(kp), m * n * num_joints * 2, message=(
          "pose/keypoints must hold pose/num_persons x video/frames x num_joints x 2 values")),
      tf.debugging.assert_equal(tf.size(sc), m * n * num_joints, message=(
          "pose/scores must hold pose/num_persons x video/frames x num_joints values")),
      tf.debugging.assert_all_finite(kp, "pose/keypoints contains NaN or inf")]
  if num_classes is not None:
    checks += [tf.debugging.assert_less(ex["label"], tf.cast(num_classes, tf.int64), message=(
        f"label outside the class list [0, {num_classes})")),
               tf.debugging.assert_non_negative(ex["label"], message="label is negative")]
  with tf.control_dependencies(checks):  # checks first: a reshape error would hide the cause
    kp, sc = tf.identity(kp), tf.identity(sc)
  # The first max_persons persons (converters store them most relevant first), padded with
  # absent (all-zero) persons.
  kp = tf.reshape(kp, [m, n, num_joints, 2])[:max_persons]
  sc = tf.reshape(sc, [m, n, num_joints])[:max_persons]
  pad = max_persons - tf.shape(kp)[0]
  kp = tf.pad(kp, [[0, pad], [0, 0], [0, 0], [0, 0]])
  sc = tf.pad(sc, [[0, pad], [0, 0], [0, 0]])
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
  kp = tf.gather(kp, flat, axis=1)                                       # (P, K * T, J, 2)
  sc = tf.gather(sc, flat, axis=1)

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
  flip = rand([], 3) < 0.5 if train else None
  if resize == "device":
    # The crop as it is in the top-left corner of a crop_pad square: the jitted step resizes
    # it (deform3d/ops/resize.py; the same filter as the host's resize below) and mirrors it
    # where "flip" says (free there; a flip here costs a pass over the clip).
    with tf.control_dependencies([tf.debugging.assert_less_equal(size, crop_pad, message=(
        f"video/height and video/width: the crop (the short side for evaluation) is larger "
        f"than dataset.crop_pad={crop_pad}; set dataset.crop_pad to the records' short side"))]):
      frames = tf.identity(frames)
    frames = tf.pad(frames, [[0, 0], [0, crop_pad - size], [0, crop_pad - size], [0, 0]])
    out_size = crop_pad
  else:
    frames = tf.image.resize(tf.cast(frames, tf.float32), [image_size, image_size],
                             antialias=True)
    if train:  # tf.cond: only the flipped clips are reversed (tf.where would reverse every clip
      # and select element by element, a slow pass)
      frames = tf.cond(flip, lambda: tf.reverse(frames, axis=[2]), lambda: frames)
    out_size = image_size
  size_f = tf.cast(size, tf.float32)
  x = (2.0 * (kp[..., 0] - tf.cast(ox, tf.float32)) + 1.0) / size_f - 1.0
  y = (2.0 * (kp[..., 1] - tf.cast(oy, tf.float32)) + 1.0) / size_f - 1.0
  if train:
    x = tf.where(flip, -x, x)
    perm = tf.constant(flip_perm, tf.int32)
    x = tf.where(flip, tf.gather(x, perm, axis=2), x)
    y = tf.where(flip, tf.gather(y, perm, axis=2), y)
    sc = tf.where(flip, tf.gather(sc, perm, axis=2), sc)
  present = tf.cast(sc > 0, tf.float32)
  keypoints = tf.stack([x * present, y * present, sc], axis=-1)
  if resize == "device":
    pass  # uint8 pixels of the crop
  elif frames_dtype == "uint8":
    # The resize's pixels rounded to the nearest level (the antialiasing filter's weights are
    # non-negative and sum to 1, so they stay in [0, 255]); normalized in the jitted step.
    frames = tf.cast(tf.round(tf.clip_by_value(frames, 0.0, 255.0)), tf.uint8)
  else:
    frames = (frames - MEAN) / STD
  frames = tf.reshape(frames, [k, num_frames, out_size, out_size, 3])
  keypoints = tf.reshape(keypoints, [max_persons, k, num_frames, num_joints, 3])
  keypoints = keypoints[0] if max_persons == 1 else tf.transpose(keypoints, [1, 0, 2, 3, 4])
  if train:
    frames, keypoints = frames[0], keypoints[0]
  out = {"frames": frames, "keypoints": keypoints,
         "label": tf.cast(ex["label"], tf.int32), "id": ex["id"]}
  if resize == "device":
    out["crop"] = size
    out["flip"] = flip if train else tf.constant(False)
  return out


def _local_files(files: list, process_index: int, process_count: int):
  """Files of this process (file-level sharding when the shard count divides evenly) and
  whether records must instead be sharded one by one."""
  if len(files) >= process_count and len(files) % process_count == 0:
    return files[process_index::process_count], False
  return files, True


def _records(files, process_index: int, process_count: int, shard_records: bool,
             cycle: int = 8, num_files: Optional[int] = None) -> tf.data.Dataset:
  """The records of ``files`` (a list, or a string tensor of ``num_files`` names), files
  interleaved deterministically; with ``shard_records``, every ``process_count``-th record."""
  num_files = len(files) if num_files is None else num_files
  ds = tf.data.Dataset.from_tensor_slices(files)
  ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=max(1, min(num_files, cycle)),
                     num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  if shard_records:
    ds = ds.shard(process_count, process_index)
  return ds


def record_counts(data_dir: str, split: str, files: Sequence[str]) -> Optional[list]:
  """Examples per shard of ``files`` from the split's metadata, without reading the shards:
  our ``{split}.json`` (``num_examples`` written round-robin over ``num_shards``) or a TFDS
  build's ``dataset_info.json`` (``shardLengths``). ``None`` when neither describes ``files``."""
  ours = os.path.join(data_dir, f"{split}.json")
  if os.path.exists(ours):
    with open(ours) as fh:
      meta = json.load(fh)
    n, shards = meta.get("num_examples"), meta.get("num_shards")
    if isinstance(n, int) and shards == len(files):
      return [n // shards + (i < n % shards) for i in range(shards)]
  info = os.path.join(data_dir, "dataset_info.json")
  if os.path.exists(info):
    with open(info) as fh:
      meta = json.load(fh)
    for entry in meta.get("splits", []):
      lengths = entry.get("shardLengths")
      if entry.get("name") == split and lengths and len(lengths) == len(files):
        return [int(x) for x in lengths]
  return None


def _epoch_seed(seed: int, epoch, stream: int):
  """A shuffle seed drawn statelessly from ``(seed, epoch, stream)`` (an int64 tensor)."""
  key = tf.stack([tf.cast(seed, tf.int64), tf.cast(epoch, tf.int64) * 2 + stream])
  return tf.random.stateless_uniform([], seed=key, maxval=2**31 - 1, dtype=tf.int64)


def _train_records(files, process_index, process_count, *, seed, shuffle_buffer, cache,
                   start_position, counts=None):
  """Endless ``(position, raw record)`` stream of one process, a pure function of ``(seed,
  position)``, built of tf.data ops only (no Python per record: it can run in a tf.data service
  worker).

  Epoch ``e`` is a permutation seeded by ``(seed, e)``: with ``cache``, a full shuffle of the
  process's records, held in memory after the first epoch; otherwise the files in a seeded
  order, interleaved, through a shuffle buffer seeded by ``(seed, e)``. Starting at
  ``start_position`` = epoch ``p // n``, record ``p % n`` reads (but does not decode) at most one
  epoch, so a resumed run sees exactly the records an uninterrupted run would have seen.
  ``counts`` (examples per file, from the split's metadata) gives ``n`` without a pass over the
  data; without it the records are counted.
  """
  local, shard_records = _local_files(files, process_index, process_count)
  records = _records(local, process_index, process_count, shard_records)
  if counts is not None:
    if shard_records:
      n = len(range(process_index, sum(counts), process_count))
    else:
      n = sum(counts[files.index(f)] for f in local)
  else:
    n = int(records.reduce(np.int64(0), lambda c, _: c + 1))
  if n == 0:
    raise ValueError(f"process {process_index} of {process_count} has no training records in "
                     f"{files[0]} .. {files[-1]}")
  epoch0, skip = divmod(start_position, n)
  names = tf.constant(local)
  cached = records.cache() if cache else None

  def epoch(e):
    if cached is not None:
      ds = cached.shuffle(n, seed=_epoch_seed(seed, e, 0), reshuffle_each_iteration=False)
    else:
      order = tf.random.experimental.stateless_shuffle(
          tf.range(len(local)), seed=tf.stack([tf.cast(seed, tf.int64), e]))
      ds = _records(tf.gather(names, order), process_index, process_count, shard_records,
                    num_files=len(local))
      ds = ds.shuffle(shuffle_buffer, seed=_epoch_seed(seed, e, 1),
                      reshuffle_each_iteration=False)
    # Positions inside the epoch's function, so that each epoch is a self-contained unit: a
    # tf.data service worker given epoch e (dynamic sharding) produces exactly its records.
    first = tf.where(e == epoch0, tf.constant(skip, tf.int64), tf.constant(0, tf.int64))
    return ds.enumerate(start=e * n).skip(first)

  return tf.data.Dataset.range(epoch0, 2**62).flat_map(epoch)


def eval_labels(data_dir: str, split: str, process_index: int = 0, process_count: int = 1
                ) -> list:
  """Labels of ``split`` in the order ``make_dataset(train=False)`` yields its examples (frames
  are not decoded)."""
  local, shard_records = _local_files(split_files(data_dir, split), process_index, process_count)
  spec = {"label": tf.io.FixedLenFeature([], tf.int64)}
  ds = _records(local, process_index, process_count, shard_records)
  ds = ds.map(lambda s: tf.io.parse_single_example(s, spec)["label"])
  return [int(y) for y in ds.as_numpy_iterator()]


def make_dataset(data_dir: str, split: str, *, num_frames: int, image_size: int, num_joints: int,
                 batch_size: int, train: bool, seed: int = 0, num_clips: int = 1,
                 flip_perm: Optional[Sequence[int]] = None, crop_scale=(0.7, 1.0),
                 process_index: int = 0, process_count: int = 1, shuffle_buffer: int = 1024,
                 cache: bool = True, start_position: int = 0,
                 num_classes: Optional[int] = None, max_persons: int = 1,
                 frames_dtype: str = "float32", service: Optional[str] = None,
                 resize: str = "host", crop_pad: Optional[int] = None) -> tf.data.Dataset:
  """Batched ``tf.data.Dataset`` for one process.

  ``batch_size`` is the per-process batch. Training data repeat forever; the stream is a pure
  function of ``(seed, position)``, and ``start_position`` (= step x per-process batch) starts it
  where an uninterrupted run would be at that step (exact resume). Evaluation data is finite,
  unshuffled, and its last batch may be smaller. ``max_persons``: see the module docstring.
  ``service``: a tf.data service dispatcher (``grpc://host:port``): the training examples are
  then read and preprocessed by its workers (``data_pipelines/service.py``; each epoch is one
  worker's unit of work, so every clip of an epoch arrives exactly once and is the clip the local
  pipeline makes at that position, but epochs of different workers interleave: the order is not
  deterministic, docs/scaling.md). Evaluation always runs locally.
  ``frames_dtype``: ``"float32"``, normalized frames; ``"uint8"``, the same frames as pixels
  rounded to the nearest level (at most half a level, 0.5 / STD after normalizing, from the
  float32 frames), for ``deform3d.pixels.normalize_frames`` in the jitted step.
  ``resize``: ``"host"``, frames resized here to ``image_size``; ``"device"`` (uint8 only), each
  clip's crop left at its own size in the top-left corner of ``crop_pad x crop_pad`` zeros,
  with its size in ``crop`` (int32) and whether to mirror it in ``flip`` (bool), one per
  example, for ``deform3d.ops.resize`` in the jitted step (the same filter; the host decodes and
  crops only, docs/data.md).
  """
  if frames_dtype not in FRAME_DTYPES:
    raise ValueError(f"make_dataset: frames_dtype must be one of {FRAME_DTYPES}, got "
                     f"{frames_dtype!r}")
  if resize not in RESIZE:
    raise ValueError(f"make_dataset: resize must be one of {RESIZE}, got {resize!r}")
  if resize == "device" and (frames_dtype != "uint8" or not crop_pad or crop_pad < 1):
    raise ValueError(f"make_dataset: resize='device' needs frames_dtype='uint8' and crop_pad "
                     f"(the records' short side), got frames_dtype={frames_dtype!r}, "
                     f"crop_pad={crop_pad!r}")
  if max_persons < 1:
    raise ValueError(f"make_dataset: max_persons must be >= 1, got {max_persons}")
  files = split_files(data_dir, split)
  if flip_perm is None:
    flip_perm = list(range(num_joints))
  if train:
    ds = _train_records(files, process_index, process_count, seed=seed,
                        shuffle_buffer=shuffle_buffer, cache=cache,
                        start_position=start_position,
                        counts=record_counts(data_dir, split, files))
  else:
    local, shard_records = _local_files(files, process_index, process_count)
    ds = _records(local, process_index, process_count, shard_records)
    if cache:
      ds = ds.cache()
  if not train:
    ds = ds.enumerate()  # (position, record); the training stream carries its own
  fn = lambda i, ex: _process(ex, i, num_frames=num_frames, image_size=image_size,
                              num_joints=num_joints, train=train, num_clips=num_clips,
                              seed=seed, flip_perm=list(flip_perm), crop_scale=crop_scale,
                              num_classes=num_classes, max_persons=max_persons,
                              frames_dtype=frames_dtype, resize=resize, crop_pad=crop_pad)
  ds = ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  if train and service:
    from data_pipelines import service as data_service
    ds = data_service.distribute(ds, service)
  ds = ds.batch(batch_size, drop_remainder=train)
  return ds.prefetch(tf.data.AUTOTUNE)


class DataError(RuntimeError):
  """Reading a split failed; the message names the data directory, split and, for damaged
  shards, the file."""


def find_damaged_shards(files: Sequence[str]) -> list:
  """``(file, error)`` for every shard that cannot be read to its end (truncated or corrupt)."""
  bad = []
  for f in files:
    try:
      for _ in tf.data.TFRecordDataset(f):
        pass
    except tf.errors.OpError as e:
      bad.append((f, e.message.splitlines()[0]))
  return bad


def _data_error(e: "tf.errors.OpError", data_dir: str, split: str) -> DataError:
  where = f"{data_dir}, split {split!r}"
  if isinstance(e, tf.errors.DataLossError):
    bad = find_damaged_shards(split_files(data_dir, split))
    files = "; ".join(f"{f}: {m}" for f, m in bad) or "(no shard fails on its own)"
    return DataError(f"{where}: damaged TFRecord shard(s): {files}. Rebuild the split or "
                     f"remove the shard (its examples are then missing).")
  message = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", e.message).splitlines()[0]
  return DataError(f"{where}: bad example: {message}")


def iterate(ds: tf.data.Dataset, batch_size: Optional[int] = None,
            source: Optional[tuple] = None) -> Iterator[dict]:
  """NumPy batches. With ``batch_size``, short batches are zero-padded to it and get a
  ``mask`` (1 = real example), so every batch has the same shape for the jitted step.
  ``source`` = ``(data_dir, split)`` names the data in errors (damaged shard, bad example)."""
  it = ds.as_numpy_iterator()
  while True:
    try:
      batch = next(it)
    except StopIteration:
      return
    except tf.errors.OpError as e:
      if source is None:
        raise
      raise _data_error(e, *source) from None
    n = batch["label"].shape[0]
    batch["mask"] = np.ones((n,), np.float32)
    if batch_size is not None and n < batch_size:
      pad = batch_size - n
      batch = {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)])
               for k, v in batch.items()}
    yield batch
