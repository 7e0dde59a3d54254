"""The one TFRecord schema every dataset is written in, and its sharded, atomic writer.

One ``tf.train.Example`` per video:

| feature | type | meaning |
| --- | --- | --- |
| ``video/frames`` | bytes list (F) | JPEG-encoded RGB frames |
| ``video/height``, ``video/width`` | int | frame size in pixels |
| ``pose/keypoints`` | float list (F * J * 2) | ``(x, y)`` in pixels of the stored frames |
| ``pose/scores`` | float list (F * J) | confidence in ``[0, 1]``; 0 marks a missing joint |
| ``pose/num_joints`` | int | ``J`` |
| ``label`` | int | class index into the dataset's ``classes.txt`` |
| ``id`` | bytes | source identifier (file name) |

A split is written as ``{split}-{i:05d}-of-{n:05d}.tfrecord`` shards plus ``{split}.json``
(counts, skipped samples with reasons). Each shard is written to a temporary name and renamed
when complete, so an interrupted conversion never leaves a truncated shard under a final name.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Iterable, List, Optional, Sequence

import numpy as np
import tensorflow as tf

SCHEMA_VERSION = 1


@dataclasses.dataclass
class Sample:
  """One video: frames (F, H, W, 3) uint8, keypoints (F, J, 2) pixels, scores (F, J)."""
  frames: np.ndarray
  keypoints: np.ndarray
  scores: np.ndarray
  label: int
  id: str


class InvalidSample(ValueError):
  """A sample that cannot be written; the message names the source and the bad field."""


def validate(sample: Sample, num_classes: int, num_joints: int) -> None:
  f = sample.frames
  if f.ndim != 4 or f.shape[-1] != 3 or f.dtype != np.uint8:
    raise InvalidSample(f"{sample.id}: frames must be uint8 (F, H, W, 3), got {f.dtype} {f.shape}")
  n = f.shape[0]
  if n == 0:
    raise InvalidSample(f"{sample.id}: frames: clip has no frames")
  if sample.keypoints.shape != (n, num_joints, 2):
    raise InvalidSample(f"{sample.id}: keypoints must be (F, J, 2) = ({n}, {num_joints}, 2), got "
                        f"{sample.keypoints.shape}")
  if sample.scores.shape != (n, num_joints):
    raise InvalidSample(f"{sample.id}: scores must be (F, J) = ({n}, {num_joints}), got "
                        f"{sample.scores.shape}")
  if not (0 <= sample.label < num_classes):
    raise InvalidSample(f"{sample.id}: label {sample.label} outside the class list "
                        f"[0, {num_classes})")
  if not np.all(np.isfinite(sample.keypoints)):
    raise InvalidSample(f"{sample.id}: keypoints contain NaN or inf")


def encode_jpeg(frame: np.ndarray, quality: int = 92) -> bytes:
  return tf.io.encode_jpeg(tf.constant(frame), quality=quality).numpy()


def to_example(sample: Sample, jpeg_quality: int = 92) -> bytes:
  f = sample.frames
  feats = {
      "video/frames": tf.train.Feature(bytes_list=tf.train.BytesList(
          value=[encode_jpeg(x, jpeg_quality) for x in f])),
      "video/height": tf.train.Feature(int64_list=tf.train.Int64List(value=[f.shape[1]])),
      "video/width": tf.train.Feature(int64_list=tf.train.Int64List(value=[f.shape[2]])),
      "pose/keypoints": tf.train.Feature(float_list=tf.train.FloatList(
          value=sample.keypoints.astype(np.float32).ravel())),
      "pose/scores": tf.train.Feature(float_list=tf.train.FloatList(
          value=sample.scores.astype(np.float32).ravel())),
      "pose/num_joints": tf.train.Feature(int64_list=tf.train.Int64List(
          value=[sample.keypoints.shape[1]])),
      "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(sample.label)])),
      "id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[sample.id.encode()])),
  }
  return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString(
      deterministic=True)  # key-sorted map: same bytes in every process


def shard_paths(directory: str, split: str, num_shards: int) -> List[str]:
  return [os.path.join(directory, f"{split}-{i:05d}-of-{num_shards:05d}.tfrecord")
          for i in range(num_shards)]


def write_split(directory: str, split: str, samples: Iterable[Sample], *, num_shards: int,
                num_classes: int, num_joints: int, jpeg_quality: int = 92) -> dict:
  """Writes ``samples`` round-robin into ``num_shards`` shards; invalid samples are skipped and
  listed (with the reason) in ``{split}.json``, never silently dropped. Returns that summary."""
  os.makedirs(directory, exist_ok=True)
  final = shard_paths(directory, split, num_shards)
  tmp = [p + ".tmp" for p in final]
  writers = [tf.io.TFRecordWriter(p) for p in tmp]
  written, skipped = 0, []
  try:
    for sample in samples:
      try:
        validate(sample, num_classes, num_joints)
      except InvalidSample as e:
        skipped.append({"id": sample.id, "reason": str(e)})
        continue
      writers[written % num_shards].write(to_example(sample, jpeg_quality))
      written += 1
  finally:
    for w in writers:
      w.close()
  for t, p in zip(tmp, final):
    os.replace(t, p)
  summary = {"split": split, "num_examples": written, "num_shards": num_shards,
             "skipped": skipped, "schema_version": SCHEMA_VERSION}
  with open(os.path.join(directory, f"{split}.json"), "w") as fh:
    json.dump(summary, fh, indent=1)
  return summary


def write_classes(directory: str, classes: Sequence[str]) -> None:
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, "classes.txt"), "w") as fh:
    fh.write("\n".join(classes) + "\n")


def read_classes(directory: str) -> List[str]:
  """Class names: ``classes.txt``, else a TFDS build's ``label.labels.txt``."""
  path = os.path.join(directory, "classes.txt")
  if not os.path.exists(path) and os.path.exists(os.path.join(directory, "label.labels.txt")):
    path = os.path.join(directory, "label.labels.txt")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: class list not found; build the dataset first")
  with open(path) as fh:
    return [line.strip() for line in fh if line.strip()]


def split_summary(directory: str, split: str) -> Optional[dict]:
  path = os.path.join(directory, f"{split}.json")
  if not os.path.exists(path):
    return None
  with open(path) as fh:
    return json.load(fh)
