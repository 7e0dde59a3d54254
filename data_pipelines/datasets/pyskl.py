"""pyskl pose-annotation pickles (2-D HRNet poses for NTU 60/120, FineGYM, ...).

Format: ``{"split": {name: [frame_dir, ...]}, "annotations": [{"frame_dir": str, "label": int,
"img_shape": (h, w), "total_frames": int, "keypoint": (M, T, V, 2) pixels of img_shape,
"keypoint_score": (M, T, V)}, ...]}``.
"""
from __future__ import annotations

import pickle
from typing import Dict, Optional, Tuple

import numpy as np

from data_pipelines import records
from data_pipelines.datasets import common
from data_pipelines.datasets.common import FrameOptions, RawFormatError, select_persons

REQUIRED = ("frame_dir", "label", "img_shape", "total_frames", "keypoint", "keypoint_score")


def load(path: str) -> Tuple[Dict[str, list], Dict[str, dict]]:
  """Returns ``(splits, annotations by frame_dir)``; checks the top-level structure."""
  try:
    with open(path, "rb") as fh:
      data = pickle.load(fh)
  except Exception as e:
    raise RawFormatError(f"{path}: unreadable pickle ({type(e).__name__}: {e})") from e
  if not isinstance(data, dict) or "split" not in data or "annotations" not in data:
    raise RawFormatError(f"{path}: expected a dict with keys 'split' and 'annotations'")
  anns = {}
  for i, a in enumerate(data["annotations"]):
    missing = [k for k in REQUIRED if k not in a]
    if missing:
      raise RawFormatError(f"{path}: annotations[{i}] lacks field(s) {missing}")
    anns[a["frame_dir"]] = a
  return {k: list(v) for k, v in data["split"].items()}, anns


def persons(ann: dict, num_joints: int, max_persons: int = 1, source: str = "pyskl"):
  """``(M, T, V, 2)`` keypoints and ``(M, T, V)`` scores of the ``M <= max_persons`` persons with
  the highest total score (``select_persons``), checked against the annotation's
  ``total_frames`` and the expected joint count. An annotation with no person (``M = 0``, as
  pyskl's pose extractor writes when it finds nobody) raises ``RawFormatError``."""
  fd = ann.get("frame_dir", "?")
  where = f"{source}: {fd}"
  kp = common.field_array(ann, "keypoint", np.float32, where)
  sc = common.field_array(ann, "keypoint_score", np.float32, where)
  total = common.field_array(ann, "total_frames", np.float64, where)
  if total.shape != () or total != int(total):
    raise RawFormatError(f"{where}: field 'total_frames' must be one integer, got {total!r}")
  t = int(total)
  if kp.ndim != 4 or kp.shape[1:] != (t, num_joints, 2):
    raise RawFormatError(f"{source}: {fd}: field 'keypoint' must be (M, total_frames, V, 2) = "
                         f"(M, {t}, {num_joints}, 2), got {kp.shape}")
  if sc.shape != kp.shape[:3]:
    raise RawFormatError(f"{source}: {fd}: field 'keypoint_score' must be {kp.shape[:3]}, got "
                         f"{sc.shape}")
  if not np.all(np.isfinite(kp)) or not np.all(np.isfinite(sc)):
    raise RawFormatError(f"{source}: {fd}: field 'keypoint' or 'keypoint_score' has NaN/inf")
  if kp.shape[0] == 0:
    raise RawFormatError(f"{source}: {fd}: no person (field 'keypoint' has M = 0 persons)")
  return select_persons(kp, sc, max_persons, rule="score", source=f"{source}: {fd}")


# -- Loader shared by the builders that read pyskl poses (NTU HRNet, FineGYM) ---------------
def load_video(item: dict, options: FrameOptions) -> records.Sample:
  """Pose from a pyskl annotation (coordinates in its ``img_shape``), frames from the video."""
  ann = item["ann"]
  kp, sc = persons(ann, item["num_joints"], item.get("max_persons", 1), source=item["pickle"])
  frames, fps = common.read_video(item["video"], item.get("start"), item.get("end"))
  kp = common.scale_keypoints(kp, tuple(ann["img_shape"]), frames.shape[1:3])
  f, kp, sc = common.finish(frames, kp, sc, fps, options)
  return records.Sample(f, kp, sc, item["label"], item["key"])


def item(pkl: str, anns: dict, frame_dir: str, video: Optional[str], num_joints: int,
                **extra) -> dict:
  if frame_dir not in anns:
    return {"key": frame_dir, "error": f"{pkl}: split lists {frame_dir} but no annotation has "
                                       f"that frame_dir"}
  if video is None:
    return {"key": frame_dir, "error": f"{pkl}: {frame_dir}: no video for it in the manual dir"}
  ann = anns[frame_dir]
  return {"key": frame_dir, "ann": ann, "pickle": pkl, "video": video,
          "label": int(ann["label"]), "num_joints": num_joints, **extra}
