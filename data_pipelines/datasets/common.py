"""What the dataset modules share: errors, video decoding, frame-rate and size resampling, the
person choice, and the TFDS/Beam builder plumbing (every builder writes ``records.SCHEMA``).

Samples that fail (corrupt file, missing video, wrong joint count, label outside the class list)
are counted and listed with the reason, which names the file, in ``{split}-skipped.json`` next
to the shards; they are never dropped silently.
"""
from __future__ import annotations

import dataclasses
import functools
import glob
import json
import os
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf
from PIL import Image

from data_pipelines import records


def require(module: str, purpose: str):
  """Imports ``module``, an optional dependency of the ``convert`` extra, or says how to get it."""
  import importlib
  try:
    return importlib.import_module(module)
  except ImportError as e:
    raise ImportError(f"{purpose} needs the '{module}' module, which `pip install -e '.[data]'` "
                      "leaves out: install the converters' extra, "
                      "pip install -e '.[data,convert]'") from e


# TFDS (with pyarrow) comes with the ``convert`` extra: training on written records never needs it.
tfds = require("tensorflow_datasets", "building the paper's datasets (data_pipelines.datasets)")
example_serializer = require("tensorflow_datasets.core.example_serializer",
                             "building the paper's datasets (data_pipelines.datasets)")


class RawFormatError(ValueError):
  """A raw file that cannot be read as its format says; the message names the file and field."""


def field_array(container, field: str, dtype, where: str) -> np.ndarray:
  """``container[field]`` as one NumPy array of ``dtype``, for every reader's conversion of a raw
  field: a missing field, or one that is not a single rectangular numeric array (e.g. persons
  with 17 and 18 joints), raises ``RawFormatError`` naming ``where`` (the file and sample) and
  the field, which the builds list as skipped instead of stopping."""
  try:
    value = container[field]
  except (KeyError, IndexError, TypeError):
    raise RawFormatError(f"{where}: field {field!r} missing") from None
  try:
    return np.asarray(value, dtype)
  except (ValueError, TypeError) as e:
    raise RawFormatError(f"{where}: field {field!r} is not one numeric array of a single shape "
                         f"({str(e).splitlines()[0]})") from None


@dataclasses.dataclass(frozen=True)
class FrameOptions:
  """How frames are stored: ``short_side`` pixels (None keeps the source size) and ``fps``
  frames per second (None keeps every source frame)."""
  short_side: Optional[int] = 256
  fps: Optional[float] = None


def resample_indices(num_frames: int, src_fps: float, fps: Optional[float]) -> np.ndarray:
  """Source frame index for each output frame when converting ``src_fps`` to ``fps``.

  Output frame ``k`` shows the source frame whose interval contains time ``k / fps``:
  ``floor(k * src_fps / fps)``; never upsamples (``fps >= src_fps`` keeps every frame).
  """
  if fps is None or fps >= src_fps:
    return np.arange(num_frames)
  n_out = max(1, int(np.floor(num_frames * fps / src_fps)))
  return np.minimum(np.floor(np.arange(n_out) * src_fps / fps).astype(np.int64), num_frames - 1)


def target_size(height: int, width: int, short_side: Optional[int]) -> Tuple[int, int]:
  if short_side is None:
    return height, width
  s = short_side / min(height, width)
  return max(1, int(round(height * s))), max(1, int(round(width * s)))


def resize_frames(frames: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
  """(F, H, W, 3) uint8 -> (F, h, w, 3) uint8 (bilinear, antialiased by PIL)."""
  h, w = size
  if frames.shape[1:3] == (h, w):
    return frames
  return np.stack([np.asarray(Image.fromarray(f).resize((w, h), Image.BILINEAR))
                   for f in frames])


def scale_keypoints(keypoints: np.ndarray, src_hw: Tuple[int, int],
                    dst_hw: Tuple[int, int]) -> np.ndarray:
  """Pixel ``(x, y)`` of a ``src_hw`` image -> pixels of the resized ``dst_hw`` image (pixel
  centres stay centres: ``x' = (x + 0.5) * w'/w - 0.5``)."""
  sy, sx = dst_hw[0] / src_hw[0], dst_hw[1] / src_hw[1]
  out = np.array(keypoints, np.float32, copy=True)
  out[..., 0] = (out[..., 0] + 0.5) * sx - 0.5
  out[..., 1] = (out[..., 1] + 0.5) * sy - 0.5
  return out


def align_length(keypoints: np.ndarray, scores: np.ndarray, num_frames: int):
  """Pose sequences ``(M, P, J, 2)`` whose length ``P`` differs from the video's are mapped to
  the video frames by nearest relative time (frame ``i`` of ``F`` takes pose
  ``floor(i * P / F)``)."""
  p = keypoints.shape[1]
  if p == num_frames:
    return keypoints, scores
  idx = np.minimum((np.arange(num_frames) * p) // num_frames, p - 1)
  return keypoints[:, idx], scores[:, idx]


PERSON_RULES = ("score", "motion")


def rank_persons(keypoints: np.ndarray, scores: np.ndarray, rule: str = "score") -> np.ndarray:
  """Indices of the persons of ``(M, T, J, 2)`` keypoints with ``(M, T, J)`` scores, most
  relevant first; persons never seen (all scores 0) are left out.

  ``rule="score"`` (pose-estimator output such as pyskl's): the largest total score first (how
  long and how confidently seen), ties broken by motion. ``rule="motion"`` (tracked Kinect
  bodies, as the NTU skeleton literature ranks them): the most active first, activity being the
  body's motion over the clip (the sum over its joints and over x and y of the variance in time
  of the joint's seen positions; a false detection such as a coat on a chair does not move),
  ties broken by total score."""
  if rule not in PERSON_RULES:
    raise ValueError(f"rank_persons: rule must be one of {PERSON_RULES}, got {rule!r}")
  total = np.round(scores.sum(axis=(1, 2)), 4)
  present = scores > 0
  motion = np.zeros(len(total))
  for m in range(len(total)):
    for j in range(keypoints.shape[2]):
      seen = keypoints[m, present[m, :, j], j]                            # (frames seen, 2)
      motion[m] += float(seen.var(axis=0).sum()) if len(seen) > 1 else 0.0
  order = np.lexsort((-motion, -total) if rule == "score" else (-total, -motion))
  return order[total[order] > 0]


def select_persons(keypoints: np.ndarray, scores: np.ndarray, max_persons: int,
                   rule: str = "score", source: str = ""):
  """The ``max_persons`` most relevant persons (``rank_persons``): ``(M', T, J, 2)`` keypoints
  and ``(M', T, J)`` scores, ``1 <= M' <= max_persons``. A clip with nobody seen raises
  ``RawFormatError`` (the build lists it as skipped)."""
  order = rank_persons(keypoints, scores, rule)[:max_persons]
  if len(order) == 0:
    raise RawFormatError(f"{source}: no person: {keypoints.shape[0]} person(s) in the pose "
                         "data, none with a non-zero score")
  return keypoints[order], scores[order]


def finish(frames: np.ndarray, keypoints: np.ndarray, scores: np.ndarray, src_fps: float,
           options: FrameOptions):
  """Applies ``options`` to decoded frames and their per-frame keypoints ``(M, F, J, 2)`` of
  ``M`` persons (pixels of the source frames; ``(F, J, 2)``: one person) with scores: frame-rate
  resampling, resize, keypoint rescale. Missing joints keep ``(0, 0)``. Returns the keypoints
  and scores with their person axis."""
  if keypoints.ndim == 3:
    keypoints, scores = keypoints[None], scores[None]
  keypoints, scores = align_length(keypoints, scores, frames.shape[0])
  idx = resample_indices(frames.shape[0], src_fps, options.fps)
  frames, keypoints, scores = frames[idx], keypoints[:, idx], scores[:, idx]
  size = target_size(frames.shape[1], frames.shape[2], options.short_side)
  kp = scale_keypoints(keypoints, frames.shape[1:3], size)
  kp[scores <= 0] = 0.0
  return resize_frames(frames, size), kp, scores.astype(np.float32)


def read_video(path: str, start_s: Optional[float] = None,
               end_s: Optional[float] = None) -> Tuple[np.ndarray, float]:
  """Frames ``(F, H, W, 3)`` uint8 and the stream's frame rate. With ``start_s``/``end_s``, only
  frames whose presentation time lies in ``[start_s, end_s)`` (FineGYM element windows)."""
  av = require("av", "decoding videos")  # imported here so pose-only readers work without it

  if not os.path.exists(path):
    raise RawFormatError(f"{path}: video file not found")
  try:
    with av.open(path) as container:
      if not container.streams.video:
        raise RawFormatError(f"{path}: no video stream")
      stream = container.streams.video[0]
      fps = float(stream.average_rate or stream.guessed_rate or 30.0)
      if start_s is not None and start_s > 1.0:
        container.seek(int((start_s - 1.0) / stream.time_base), stream=stream, backward=True)
      frames = []
      for frame in container.decode(stream):
        t = float(frame.pts * stream.time_base) if frame.pts is not None else None
        if t is not None and start_s is not None and t < start_s:
          continue
        if t is not None and end_s is not None and t >= end_s:
          break
        frames.append(frame.to_ndarray(format="rgb24"))
  except RawFormatError:
    raise
  except Exception as e:  # av.error.InvalidDataError and friends
    raise RawFormatError(f"{path}: unreadable video ({type(e).__name__}: {e})") from e
  if not frames:
    window = "" if start_s is None else f" in [{start_s:.2f}, {end_s:.2f}) s"
    raise RawFormatError(f"{path}: no decodable frames{window}")
  return np.stack(frames), fps


# -- TFDS/Beam builders ----------------------------------------------------------------------
VERSION = tfds.core.Version("1.1.0")
RELEASE_NOTES = {"1.0.0": "Schema v1: JPEG frames, (x, y) pixels + scores, label map v1.",
                 "1.1.0": "Schema v2: up to MAX_PERSONS persons per clip (pose/num_persons)."}


@dataclasses.dataclass
class Config(tfds.core.BuilderConfig):
  """``short_side``: stored frame size (pixels of the short side, None = source size);
  ``fps``: stored frame rate (None = every source frame); ``jpeg_quality``."""
  benchmark: str = ""
  short_side: Optional[int] = 256
  fps: Optional[float] = None
  jpeg_quality: int = 90

  @property
  def frame_options(self) -> FrameOptions:
    return FrameOptions(self.short_side, self.fps)


def convert(item: dict, *, load: Callable[[dict, FrameOptions], records.Sample],
            options: FrameOptions, num_classes: int, num_joints: int, jpeg_quality: int):
  """One raw item -> ``("ok", key, features)`` or ``("skipped", key, reason)``."""
  key = item["key"]
  try:
    if item.get("error"):
      raise RawFormatError(item["error"])
    sample = load(item, options)
    records.validate(sample, num_classes, num_joints)
    return "ok", key, records.tfds_example(sample, jpeg_quality)
  except (RawFormatError, records.InvalidSample) as e:
    return "skipped", key, str(e)


def _num_classes(classes) -> int:
  return classes if isinstance(classes, int) else len(classes)


def _write_skipped(entries, path: str, split: str) -> None:
  entries = sorted(entries)
  with tf.io.gfile.GFile(path, "w") as fh:
    json.dump({"split": split, "num_skipped": len(entries),
               "skipped": [{"id": k, "reason": r} for k, r in entries]}, fh, indent=1)


class DeterministicExampleSerializer(example_serializer.ExampleSerializer):
  """Serializes with protobuf's deterministic (key-sorted) map order. The default order of the
  ``features`` map depends on a per-process hash seed, so the same example written by two Beam
  worker processes would differ in bytes."""

  def serialize_example(self, example):
    return self.get_tf_example(example).SerializeToString(deterministic=True)


class Builder(tfds.core.GeneratorBasedBuilder):
  """Shared Beam plumbing: subclasses give ``_classes``, ``NUM_JOINTS``, ``_items`` (split ->
  list of picklable dicts with a unique ``key``) and a module-level ``LOAD(item, options)``."""
  VERSION = VERSION
  RELEASE_NOTES = RELEASE_NOTES
  NUM_JOINTS: int
  LOAD: Callable

  def _classes(self) -> List[str]:
    raise NotImplementedError

  def _items(self, manual_dir: str) -> Dict[str, List[dict]]:
    raise NotImplementedError

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=records.tfds_features(self._classes(), self.NUM_JOINTS), supervised_keys=None,
        description=f"{self.name}/{self.builder_config.name}; label map "
                    f"{self.LABEL_MAP_VERSION}")

  def _split_generators(self, dl_manager, pipeline):
    beam = require("apache_beam", "building a dataset (its Beam pipeline)")

    manual_dir = os.fspath(dl_manager.manual_dir)
    items = self._items(manual_dir)
    fn = functools.partial(
        convert, load=type(self).LOAD, options=self.builder_config.frame_options,
        num_classes=_num_classes(self._classes()), num_joints=self.NUM_JOINTS,
        jpeg_quality=self.builder_config.jpeg_quality)
    out = {}
    for split, its in items.items():
      if not its:
        raise RawFormatError(f"{manual_dir}: no raw samples found for split {split!r} of "
                             f"{self.name}/{self.builder_config.name}")
      res = (pipeline | f"{split}/list" >> beam.Create(sorted(its, key=lambda i: i["key"]))
             | f"{split}/reshuffle" >> beam.Reshuffle()
             | f"{split}/convert" >> beam.Map(fn))
      skipped_path = os.path.join(os.fspath(self.data_dir), f"{split}-skipped.json")
      _ = (res | f"{split}/skipped" >> beam.Filter(lambda r: r[0] == "skipped")
           | f"{split}/skipped_kv" >> beam.Map(lambda r: (r[1], r[2]))
           | f"{split}/skipped_list" >> beam.combiners.ToList()
           | f"{split}/skipped_write" >> beam.Map(_write_skipped, skipped_path, split))
      out[split] = (res | f"{split}/ok" >> beam.Filter(lambda r: r[0] == "ok")
                    | f"{split}/ok_kv" >> beam.Map(lambda r: (r[1], r[2])))
    return out

  def _generate_splits(self, dl_manager, download_config):
    # TFDS builds its serializer inside; swap in the deterministic one for this build only (the
    # instance is pickled to Beam workers, which import it from this module).
    original = example_serializer.ExampleSerializer
    example_serializer.ExampleSerializer = DeterministicExampleSerializer
    try:
      return super()._generate_splits(dl_manager, download_config)
    finally:
      example_serializer.ExampleSerializer = original

  def _generate_examples(self, **kwargs):  # splits come ready from _split_generators
    raise NotImplementedError


def rglob(root: str, pattern: str) -> List[str]:
  return sorted(glob.glob(os.path.join(root, "**", pattern), recursive=True))
