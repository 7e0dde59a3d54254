"""TFDS builders for the paper's datasets, generated with Apache Beam from the raw files.

Builders (TFDS names) and their configs:

| builder | configs | raw files in ``--manual_dir`` |
| --- | --- | --- |
| ``ntu_rgbd`` | ``ntu60_xsub``, ``ntu60_xview``, ``ntu120_xsub``, ``ntu120_xset`` | ``*.skeleton``, ``*_rgb.avi`` |
| ``ntu_rgbd_hrnet`` | the same four | ``ntu60_hrnet.pkl`` / ``ntu120_hrnet.pkl`` (pyskl), ``*_rgb.avi`` |
| ``penn_action`` | ``default`` | ``labels/NNNN.mat``, ``frames/NNNN/*.jpg`` |
| ``finegym`` | ``gym99`` | ``gym99_*element*.txt``, ``gym99_categories.txt``, ``gym_hrnet.pkl``, ``videos/{id}.*`` |

Every builder writes the one record schema of ``data_pipelines/records.py`` (TFDS flattens the
nested feature dict to the same keys), so ``input_pipeline`` reads TFDS output directly. Samples
that fail (corrupt file, missing video, wrong joint count, label outside the class list) are
counted and listed with the reason, which names the file, in ``{split}-skipped.json`` next to
the shards; they are never dropped silently.

Build with ``python launch/build_dataset.py`` (wraps ``download_and_prepare``, sets the Beam
runner and workers); see docs/datasets.md.
"""
from __future__ import annotations

import dataclasses
import functools
import glob
import json
import os
from typing import Callable, Dict, List, Optional

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from tensorflow_datasets.core import example_serializer

from data_pipelines import records
from data_pipelines.raw import common, finegym, ntu, penn, pyskl
from data_pipelines.raw.common import FrameOptions, RawFormatError
from data_pipelines.skeletons import COCO17, NTU25, PENN13

VERSION = tfds.core.Version("1.0.0")
RELEASE_NOTES = {"1.0.0": "Schema v1: JPEG frames, (x, y) pixels + scores, label map v1."}


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


def features(classes, num_joints: int) -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({
      "video": {
          "frames": tfds.features.Sequence(
              tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg")),
          "height": np.int64,
          "width": np.int64,
      },
      "pose": {
          "keypoints": tfds.features.Tensor(shape=(None, num_joints, 2), dtype=np.float32),
          "scores": tfds.features.Tensor(shape=(None, num_joints), dtype=np.float32),
          "num_joints": np.int64,
      },
      "label": (tfds.features.ClassLabel(num_classes=classes) if isinstance(classes, int)
                else tfds.features.ClassLabel(names=classes)),
      "id": tfds.features.Text(),
  })


def to_features(sample: records.Sample, jpeg_quality: int) -> dict:
  return {
      "video": {"frames": [records.encode_jpeg(f, jpeg_quality) for f in sample.frames],
                "height": sample.frames.shape[1], "width": sample.frames.shape[2]},
      "pose": {"keypoints": sample.keypoints.astype(np.float32),
               "scores": sample.scores.astype(np.float32),
               "num_joints": sample.keypoints.shape[1]},
      "label": int(sample.label),
      "id": sample.id,
  }


def convert(item: dict, *, load: Callable[[dict, FrameOptions], records.Sample],
            options: FrameOptions, num_classes: int, num_joints: int, jpeg_quality: int):
  """One raw item -> ``("ok", key, features)`` or ``("skipped", key, reason)``."""
  key = item["key"]
  try:
    if item.get("error"):
      raise RawFormatError(item["error"])
    sample = load(item, options)
    records.validate(sample, num_classes, num_joints)
    return "ok", key, to_features(sample, jpeg_quality)
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


class _Builder(tfds.core.GeneratorBasedBuilder):
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
        features=features(self._classes(), self.NUM_JOINTS), supervised_keys=None,
        description=f"{self.name}/{self.builder_config.name}; label map "
                    f"{self.LABEL_MAP_VERSION}")

  def _split_generators(self, dl_manager, pipeline):
    import apache_beam as beam

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


def _rglob(root: str, pattern: str) -> List[str]:
  return sorted(glob.glob(os.path.join(root, "**", pattern), recursive=True))


def _ntu_videos(manual_dir: str) -> Dict[str, str]:
  return {os.path.basename(p)[:20]: p for p in _rglob(manual_dir, "*_rgb.avi")}


NTU_BENCHMARKS = {"ntu60_xsub": "xsub60", "ntu60_xview": "xview60", "ntu120_xsub": "xsub120",
                  "ntu120_xset": "xset120"}


def _ntu_classes(benchmark: str) -> List[str]:
  """NTU60 benchmarks use actions 1-60, NTU120 all 120 (label = action number - 1)."""
  return list(ntu.ACTIONS[:60] if benchmark.endswith("60") else ntu.ACTIONS)


def _ntu_configs(description: str) -> List[Config]:
  return [Config(name=n, benchmark=b, description=description) for n, b in NTU_BENCHMARKS.items()]


def load_ntu_kinect(item: dict, options: FrameOptions) -> records.Sample:
  tracks = ntu.read_skeleton(item["skeleton"])
  scores = ntu.tracking_scores(tracks["tracking"])
  m = common.select_person(tracks["color"], scores)
  if not item.get("video"):
    raise RawFormatError(f"{item['skeleton']}: no RGB video {item['key']}_rgb.avi in the "
                         f"manual dir")
  frames, fps = _video(item["video"])
  kp = common.scale_keypoints(tracks["color"][m], ntu.COLOR_HW, frames.shape[1:3])
  f, kp, sc = common.finish(frames, kp, scores[m], fps, options)
  return records.Sample(f, kp, sc, item["label"], item["key"])


def _video(path: str, start: Optional[float] = None, end: Optional[float] = None):
  from data_pipelines.raw.video import read_video

  return read_video(path, start, end)


class NtuRgbd(_Builder):
  """NTU RGB+D 60/120 from the Kinect ``.skeleton`` files (25 joints, colour-frame 2-D
  coordinates) and the RGB ``*_rgb.avi`` videos."""
  BUILDER_CONFIGS = _ntu_configs("Kinect v2 skeletons (25 joints) + RGB")
  NUM_JOINTS = len(NTU25)
  LOAD = staticmethod(load_ntu_kinect)
  LABEL_MAP_VERSION = ntu.LABEL_MAP_VERSION
  MANUAL_DOWNLOAD_INSTRUCTIONS = ("Put the NTU RGB+D *.skeleton files and *_rgb.avi videos "
                                  "(any folder layout) under --manual_dir.")

  def _classes(self):
    return _ntu_classes(self.builder_config.benchmark)

  def _items(self, manual_dir):
    videos = _ntu_videos(manual_dir)
    out = {"train": [], "test": []}
    for path in _rglob(manual_dir, "*.skeleton"):
      try:
        name = ntu.parse_name(path)
      except RawFormatError as e:
        out["train"].append({"key": os.path.basename(path), "error": str(e)})
        continue
      key = os.path.basename(path)[:20]
      for subset in out:
        if ntu.in_split(name, self.builder_config.benchmark, subset):
          out[subset].append({"key": key, "skeleton": path, "video": videos.get(key),
                              "label": name.label})
    return out


def load_pyskl_video(item: dict, options: FrameOptions) -> records.Sample:
  """Pose from a pyskl annotation (coordinates in its ``img_shape``), frames from the video."""
  ann = item["ann"]
  kp, sc = pyskl.main_person(ann, item["num_joints"], source=item["pickle"])
  frames, fps = _video(item["video"], item.get("start"), item.get("end"))
  kp = common.scale_keypoints(kp, tuple(ann["img_shape"]), frames.shape[1:3])
  f, kp, sc = common.finish(frames, kp, sc, fps, options)
  return records.Sample(f, kp, sc, item["label"], item["key"])


class NtuRgbdHrnet(_Builder):
  """NTU RGB+D 60/120 with the 2-D HRNet poses of pyskl (COCO-17) and the RGB videos."""
  BUILDER_CONFIGS = _ntu_configs("pyskl HRNet 2-D poses (COCO-17) + RGB")
  NUM_JOINTS = len(COCO17)
  LOAD = staticmethod(load_pyskl_video)
  LABEL_MAP_VERSION = ntu.LABEL_MAP_VERSION
  MANUAL_DOWNLOAD_INSTRUCTIONS = ("Put ntu60_hrnet.pkl or ntu120_hrnet.pkl (pyskl) and the "
                                  "*_rgb.avi videos under --manual_dir.")
  PYSKL_SPLITS = {"xsub60": "xsub", "xview60": "xview", "xsub120": "xsub", "xset120": "xset"}

  def _classes(self):
    return _ntu_classes(self.builder_config.benchmark)

  def _items(self, manual_dir):
    b = self.builder_config.benchmark
    name = "ntu60_hrnet.pkl" if b.endswith("60") else "ntu120_hrnet.pkl"
    pkl = os.path.join(manual_dir, name)
    if not os.path.exists(pkl):
      raise FileNotFoundError(f"{pkl}: pyskl pose file not found in --manual_dir")
    splits, anns = pyskl.load(pkl)
    videos = _ntu_videos(manual_dir)
    out = {}
    for subset, pyskl_subset in (("train", "train"), ("test", "val")):
      key = f"{self.PYSKL_SPLITS[b]}_{pyskl_subset}"
      if key not in splits:
        raise RawFormatError(f"{pkl}: field 'split' has no {key!r} (has {sorted(splits)})")
      out[subset] = [_pyskl_item(pkl, anns, fd, videos.get(fd[:20]), self.NUM_JOINTS)
                     for fd in splits[key]]
    return out


def _pyskl_item(pkl: str, anns: dict, frame_dir: str, video: Optional[str], num_joints: int,
                **extra) -> dict:
  if frame_dir not in anns:
    return {"key": frame_dir, "error": f"{pkl}: split lists {frame_dir} but no annotation has "
                                       f"that frame_dir"}
  if video is None:
    return {"key": frame_dir, "error": f"{pkl}: {frame_dir}: no video for it in the manual dir"}
  ann = anns[frame_dir]
  return {"key": frame_dir, "ann": ann, "pickle": pkl, "video": video,
          "label": int(ann["label"]), "num_joints": num_joints, **extra}


def load_penn(item: dict, options: FrameOptions) -> records.Sample:
  lab = penn.read_label(item["mat"])
  frames = penn.read_frames(item["frames"], lab["nframes"])
  f, kp, sc = common.finish(frames, lab["keypoints"], lab["scores"], penn.FPS, options)
  return records.Sample(f, kp, sc, lab["label"], item["key"])


class PennAction(_Builder):
  """Penn Action: 2326 clips, 15 classes, 13 annotated joints with visibility."""
  BUILDER_CONFIGS = [Config(name="default", description="Penn Action, official split")]
  NUM_JOINTS = len(PENN13)
  LOAD = staticmethod(load_penn)
  LABEL_MAP_VERSION = penn.LABEL_MAP_VERSION
  MANUAL_DOWNLOAD_INSTRUCTIONS = "Unpack Penn_Action (labels/ and frames/) under --manual_dir."

  def _classes(self):
    return list(penn.ACTIONS)

  def _items(self, manual_dir):
    out = {"train": [], "test": []}
    for mat in _rglob(manual_dir, "labels/*.mat"):
      stem = os.path.splitext(os.path.basename(mat))[0]
      item = {"key": stem, "mat": mat,
              "frames": os.path.join(os.path.dirname(os.path.dirname(mat)), "frames", stem)}
      try:
        train = penn.read_label(mat)["train"]
      except RawFormatError as e:  # listed as skipped by the conversion step
        item["error"], train = str(e), True
      out["train" if train else "test"].append(item)
    return out


class Finegym(_Builder):
  """FineGYM Gym99 elements: clips cut from the event videos by the annotation timestamps, poses
  from pyskl's ``gym_hrnet.pkl`` (FineGYM has no official poses)."""
  BUILDER_CONFIGS = [Config(name="gym99", description="Gym99 v1.1 element split")]
  NUM_JOINTS = len(COCO17)
  LOAD = staticmethod(load_pyskl_video)
  LABEL_MAP_VERSION = finegym.LABEL_MAP_VERSION
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Put gym99_train_element_v1.1.txt, gym99_val_element.txt, gym99_categories.txt, "
      "finegym_annotation_info_v1.1.json (optional), gym_hrnet.pkl and videos/{youtube_id}.mp4 "
      "under --manual_dir.")

  def _classes(self):
    # Gym99 labels are the dataset's Clabel indices; their names come from the manual dir's
    # gym99_categories.txt and are written to classes.txt by _items.
    return finegym.NUM_CLASSES

  def _items(self, manual_dir):
    names = finegym.read_categories(os.path.join(manual_dir, "gym99_categories.txt"))
    records.write_classes(os.fspath(self.data_dir), names)
    info_path = os.path.join(manual_dir, "finegym_annotation_info_v1.1.json")
    info = finegym.read_info(info_path) if os.path.exists(info_path) else None
    pkl = os.path.join(manual_dir, "gym_hrnet.pkl")
    _, anns = pyskl.load(pkl)
    videos = {os.path.splitext(os.path.basename(p))[0]: p
              for p in _rglob(os.path.join(manual_dir, "videos"), "*.*")}
    out = {}
    for subset, fname in (("train", "gym99_train_element_v1.1.txt"),
                          ("test", "gym99_val_element.txt")):
      out[subset] = []
      for eid, label in finegym.read_element_list(os.path.join(manual_dir, fname)):
        try:
          vid, start, end = finegym.element_window(eid, info)
        except RawFormatError as e:
          out[subset].append({"key": eid, "error": str(e)})
          continue
        item = _pyskl_item(pkl, anns, eid, videos.get(vid), self.NUM_JOINTS, start=start,
                           end=end)
        if "ann" in item and int(item["ann"]["label"]) != label:
          item = {"key": eid, "error": f"{pkl}: {eid}: label {item['ann']['label']} differs "
                                       f"from {fname}'s {label}"}
        out[subset].append(item)
    return out


BUILDERS = {"ntu_rgbd": NtuRgbd, "ntu_rgbd_hrnet": NtuRgbdHrnet, "penn_action": PennAction,
            "finegym": Finegym}
