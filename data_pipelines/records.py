"""The one TFRecord schema every dataset is written in (``SCHEMA``), and its sharded, atomic writer.

One ``tf.train.Example`` per video, with the fields of ``SCHEMA``: ``video/frames`` (JPEG bytes
per frame), ``video/height``, ``video/width``, ``pose/keypoints`` (M x F x J x 2 floats, pixels:
``M`` persons one after another), ``pose/scores`` (M x F x J), ``pose/num_joints``,
``pose/num_persons`` (``M``), ``label`` and ``id``. Our writer, the TFDS builders' features and
the input pipeline's parse spec are all built from ``SCHEMA``. Records of schema version 1 have
no ``pose/num_persons``; they are read as one person (``DEFAULTS``).

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

SCHEMA_VERSION = 2  # 2: several persons (pose/num_persons)


@dataclasses.dataclass
class Sample:
  """One video: frames (F, H, W, 3) uint8, keypoints (M, F, J, 2) pixels and scores (M, F, J) of
  ``M >= 1`` persons (``(F, J, 2)`` / ``(F, J)``: one person)."""
  frames: np.ndarray
  keypoints: np.ndarray
  scores: np.ndarray
  label: int
  id: str

  def persons(self):
    """``(keypoints (M, F, J, 2), scores (M, F, J))``."""
    kp, sc = np.asarray(self.keypoints), np.asarray(self.scores)
    return (kp[None], sc[None]) if kp.ndim == 3 else (kp, sc)


class InvalidSample(ValueError):
  """A sample that cannot be written; the message names the source and the bad field."""


def validate(sample: Sample, num_classes: int, num_joints: int) -> None:
  f = sample.frames
  if f.ndim != 4 or f.shape[-1] != 3 or f.dtype != np.uint8:
    raise InvalidSample(f"{sample.id}: frames must be uint8 (F, H, W, 3), got {f.dtype} {f.shape}")
  n = f.shape[0]
  if n == 0:
    raise InvalidSample(f"{sample.id}: frames: clip has no frames")
  kp, sc = sample.persons()
  m = kp.shape[0] if kp.ndim == 4 else -1
  if kp.ndim != 4 or m < 1 or kp.shape[1:] != (n, num_joints, 2):
    raise InvalidSample(f"{sample.id}: keypoints must be (M, F, J, 2) = (M >= 1, {n}, "
                        f"{num_joints}, 2), got {np.shape(sample.keypoints)}")
  if sc.shape != (m, n, num_joints):
    raise InvalidSample(f"{sample.id}: scores must be (M, F, J) = ({m}, {n}, {num_joints}), got "
                        f"{np.shape(sample.scores)}")
  if not (0 <= sample.label < num_classes):
    raise InvalidSample(f"{sample.id}: label {sample.label} outside the class list "
                        f"[0, {num_classes})")
  if not np.all(np.isfinite(kp)):
    raise InvalidSample(f"{sample.id}: keypoints contain NaN or inf")


def encode_jpeg(frame: np.ndarray, quality: int = 92) -> bytes:
  return tf.io.encode_jpeg(tf.constant(frame), quality=quality).numpy()


# The schema, once: (key, kind, shape, meaning). The writer (``to_example``), the TFDS features
# (``tfds_features``, ``tfds_example``) and the parse spec (``parse_spec``) are built from it;
# ``values`` is the one place that maps a ``Sample`` to the fields. Shapes: F frames, J joints,
# M persons ("MF": M x F rows, person after person).
SCHEMA = (
    ("video/frames", "jpegs", ("F",), "JPEG-encoded RGB frames"),
    ("video/height", "int", (), "frame height in pixels"),
    ("video/width", "int", (), "frame width in pixels"),
    ("pose/keypoints", "floats", ("MF", "J", 2), "(x, y) in pixels of the stored frames"),
    ("pose/scores", "floats", ("MF", "J"), "confidence in [0, 1]; 0 marks a missing joint or, "
     "for all of a person's joints, a padding person"),
    ("pose/num_joints", "int", (), "J"),
    ("pose/num_persons", "int", (), "M"),
    ("label", "label", (), "class index into the dataset's classes.txt"),
    ("id", "text", (), "source identifier (file name)"),
)
# Values of fields that older records lack (schema version 1: one person).
DEFAULTS = {"pose/num_persons": 1}


def values(sample: Sample, jpeg_quality: int = 92) -> dict:
  """``{key: value}`` of every ``SCHEMA`` field for ``sample`` (JPEG bytes, ints, float arrays)."""
  f = sample.frames
  kp, sc = sample.persons()
  out = {"video/frames": [encode_jpeg(x, jpeg_quality) for x in f],
         "video/height": int(f.shape[1]), "video/width": int(f.shape[2]),
         "pose/keypoints": kp.reshape((-1,) + kp.shape[2:]).astype(np.float32),
         "pose/scores": sc.reshape((-1,) + sc.shape[2:]).astype(np.float32),
         "pose/num_joints": int(kp.shape[2]), "pose/num_persons": int(kp.shape[0]),
         "label": int(sample.label), "id": sample.id}
  assert list(out) == [k for k, *_ in SCHEMA]
  return out


def to_example(sample: Sample, jpeg_quality: int = 92) -> bytes:
  """A serialized ``tf.train.Example`` of ``sample`` (our writer's format)."""
  feature = {
      "jpegs": lambda v: tf.train.Feature(bytes_list=tf.train.BytesList(value=v)),
      "int": lambda v: tf.train.Feature(int64_list=tf.train.Int64List(value=[v])),
      "label": lambda v: tf.train.Feature(int64_list=tf.train.Int64List(value=[v])),
      "floats": lambda v: tf.train.Feature(float_list=tf.train.FloatList(value=v.ravel())),
      "text": lambda v: tf.train.Feature(bytes_list=tf.train.BytesList(value=[v.encode()])),
  }
  vals = values(sample, jpeg_quality)
  feats = {key: feature[kind](vals[key]) for key, kind, _, _ in SCHEMA}
  return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString(
      deterministic=True)  # key-sorted map: same bytes in every process


def parse_spec() -> dict:
  """``tf.io.parse_single_example`` spec of the schema; reads our shards and TFDS builds."""
  spec = {"jpegs": tf.io.VarLenFeature(tf.string), "floats": tf.io.VarLenFeature(tf.float32),
          "int": tf.io.FixedLenFeature([], tf.int64),
          "label": tf.io.FixedLenFeature([], tf.int64),
          "text": tf.io.FixedLenFeature([], tf.string)}
  out = {key: spec[kind] for key, kind, _, _ in SCHEMA}
  for key, value in DEFAULTS.items():
    out[key] = tf.io.FixedLenFeature([], tf.int64, default_value=value)
  return out


def _nest(flat: dict) -> dict:
  """``{"a/b": v}`` -> ``{"a": {"b": v}}``: TFDS flattens nested features back to these keys."""
  out = {}
  for key, v in flat.items():
    *groups, name = key.split("/")
    node = out
    for g in groups:
      node = node.setdefault(g, {})
    node[name] = v
  return out


def tfds_features(classes, num_joints: int):
  """The schema as ``tfds.features.FeaturesDict`` (``classes``: names, or a count)."""
  import tensorflow_datasets as tfds
  dims = {"F": None, "MF": None, "J": num_joints}
  label = (tfds.features.ClassLabel(num_classes=classes) if isinstance(classes, int)
           else tfds.features.ClassLabel(names=classes))
  make = {
      "jpegs": lambda shape: tfds.features.Sequence(
          tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg")),
      "int": lambda shape: np.int64,
      "floats": lambda shape: tfds.features.Tensor(shape=tuple(dims.get(d, d) for d in shape),
                                                   dtype=np.float32),
      "label": lambda shape: label,
      "text": lambda shape: tfds.features.Text(),
  }
  return tfds.features.FeaturesDict(_nest({key: make[kind](shape)
                                           for key, kind, shape, _ in SCHEMA}))


def tfds_example(sample: Sample, jpeg_quality: int = 92) -> dict:
  """``sample`` as the nested dict ``tfds_features`` encodes."""
  return _nest(values(sample, jpeg_quality))


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
