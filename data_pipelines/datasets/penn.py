"""Penn Action: per-video ``labels/NNNN.mat`` (13 joints, visibility, bbox) and ``frames/NNNN/``.

``.mat`` fields used: ``action`` (str), ``x``, ``y`` (nframes x 13 pixels), ``visibility``
(nframes x 13, 0/1), ``train`` (1 train / -1 test), ``nframes``, ``dimensions`` ([h, w, nframes]).
Joint order matches ``data_pipelines.skeletons.PENN13``.
"""
from __future__ import annotations

import glob
import os
from typing import Dict

import numpy as np
from PIL import Image

from data_pipelines import records
from data_pipelines.datasets import common
from data_pipelines.datasets.common import Config, FrameOptions, RawFormatError
from data_pipelines.skeletons import PENN13

NUM_JOINTS = 13
FPS = 30.0  # Penn Action frames carry no rate; its videos are ~30 fps
LABEL_MAP_VERSION = "penn_action-v1"
ACTIONS = ("baseball_pitch", "baseball_swing", "bench_press", "bowl", "clean_and_jerk",
           "golf_swing", "jump_rope", "jumping_jacks", "pullup", "pushup", "situp", "squat",
           "strum_guitar", "tennis_forehand", "tennis_serve")


def read_label(path: str) -> Dict[str, np.ndarray]:
  scipy_io = common.require("scipy.io", "reading Penn Action's .mat labels")
  try:
    m = scipy_io.loadmat(path, squeeze_me=True)
  except Exception as e:
    raise RawFormatError(f"{path}: unreadable .mat file ({type(e).__name__}: {e})") from e
  for field in ("action", "x", "y", "visibility", "train"):
    if field not in m:
      raise RawFormatError(f"{path}: field {field!r} missing")
  x, y, vis = (np.atleast_2d(common.field_array(m, k, np.float64, path))
               for k in ("x", "y", "visibility"))
  n = int(m.get("nframes", x.shape[0]))
  for k, a in (("x", x), ("y", y), ("visibility", vis)):
    if a.shape != (n, NUM_JOINTS):
      raise RawFormatError(f"{path}: field {k!r} must be (nframes, {NUM_JOINTS}) = "
                           f"({n}, {NUM_JOINTS}), got {a.shape}")
  action = str(m["action"])
  if action not in ACTIONS:
    raise RawFormatError(f"{path}: field 'action' = {action!r} is not one of the "
                         f"{len(ACTIONS)} Penn Action classes")
  return {"keypoints": np.stack([x, y], -1).astype(np.float32),
          "scores": (vis > 0).astype(np.float32), "label": ACTIONS.index(action),
          "train": int(m["train"]) == 1, "nframes": n}


def read_frames(frame_dir: str, nframes: int) -> np.ndarray:
  files = sorted(glob.glob(os.path.join(frame_dir, "*.jpg")))
  if len(files) != nframes:
    raise RawFormatError(f"{frame_dir}: expected {nframes} frames (nframes in the .mat file), "
                         f"found {len(files)} .jpg files")
  out = []
  for f in files:
    try:
      with Image.open(f) as im:
        out.append(np.asarray(im.convert("RGB")))
    except Exception as e:
      raise RawFormatError(f"{f}: unreadable image ({type(e).__name__}: {e})") from e
  if len({a.shape for a in out}) != 1:
    raise RawFormatError(f"{frame_dir}: frames differ in size")
  return np.stack(out)


# -- Loader and TFDS builder ---------------------------------------------------------------
def load_penn(item: dict, options: FrameOptions) -> records.Sample:
  lab = read_label(item["mat"])
  frames = read_frames(item["frames"], lab["nframes"])
  f, kp, sc = common.finish(frames, lab["keypoints"], lab["scores"], FPS, options)
  return records.Sample(f, kp, sc, lab["label"], item["key"])


class PennAction(common.Builder):
  """Penn Action: 2326 clips, 15 classes, 13 annotated joints with visibility."""
  BUILDER_CONFIGS = [Config(name="default", description="Penn Action, official split")]
  NUM_JOINTS = len(PENN13)
  LOAD = staticmethod(load_penn)
  LABEL_MAP_VERSION = LABEL_MAP_VERSION
  MANUAL_DOWNLOAD_INSTRUCTIONS = "Unpack Penn_Action (labels/ and frames/) under --manual_dir."

  def _classes(self):
    return list(ACTIONS)

  def _items(self, manual_dir):
    out = {"train": [], "test": []}
    for mat in common.rglob(manual_dir, "labels/*.mat"):
      stem = os.path.splitext(os.path.basename(mat))[0]
      item = {"key": stem, "mat": mat,
              "frames": os.path.join(os.path.dirname(os.path.dirname(mat)), "frames", stem)}
      try:
        train = read_label(mat)["train"]
      except RawFormatError as e:  # listed as skipped by the conversion step
        item["error"], train = str(e), True
      out["train" if train else "test"].append(item)
    return out
