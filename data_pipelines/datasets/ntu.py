"""NTU RGB+D 60 / 120: ``.skeleton`` files (Kinect v2, 25 joints, multi-body), file-name fields,
the official evaluation splits and the action list.

``.skeleton`` text format (one value group per line)::

  frame_count
  per frame:   body_count
    per body:  bodyID clippedEdges handLeftConfidence handLeftState handRightConfidence
               handRightState isRestricted leanX leanY trackingState
               joint_count (25)
      per joint: x y z depthX depthY colorX colorY orientW orientX orientY orientZ trackingState

A frame with ``body_count`` 0 is a frame where Kinect saw nobody ("missing frame").
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Dict, List

import numpy as np

from data_pipelines import records
from data_pipelines.datasets import common, pyskl
from data_pipelines.datasets.common import Config, FrameOptions, RawFormatError
from data_pipelines.skeletons import COCO17, NTU25

NUM_JOINTS = 25
COLOR_HW = (1080, 1920)  # colour camera frame size; colorX/colorY are pixels of it
FPS = 30.0
LABEL_MAP_VERSION = "ntu120-actions-v1"  # label = action number A - 1

NAME_RE = re.compile(r"S(\d{3})C(\d{3})P(\d{3})R(\d{3})A(\d{3})")

# Official protocols (Shahroudy et al. 2016; Liu et al. 2019).
XSUB60_TRAIN_SUBJECTS = (1, 2, 4, 5, 8, 9, 13, 14, 15, 16, 17, 18, 19, 25, 27, 28, 31, 34, 35, 38)
XSUB120_TRAIN_SUBJECTS = XSUB60_TRAIN_SUBJECTS + (
    45, 46, 47, 49, 50, 52, 53, 54, 55, 56, 57, 58, 59, 70, 74, 78, 80, 81, 82, 83, 84, 85, 86,
    89, 91, 92, 93, 94, 95, 97, 98, 100, 103)
XVIEW_TRAIN_CAMERAS = (2, 3)

ACTIONS = (
    "drink water", "eat meal/snack", "brushing teeth", "brushing hair", "drop", "pickup",
    "throw", "sitting down", "standing up (from sitting position)", "clapping", "reading",
    "writing", "tear up paper", "wear jacket", "take off jacket", "wear a shoe",
    "take off a shoe", "wear on glasses", "take off glasses", "put on a hat/cap",
    "take off a hat/cap", "cheer up", "hand waving", "kicking something",
    "reach into pocket", "hopping (one foot jumping)", "jump up",
    "make a phone call/answer phone", "playing with phone/tablet", "typing on a keyboard",
    "pointing to something with finger", "taking a selfie", "check time (from watch)",
    "rub two hands together", "nod head/bow", "shake head", "wipe face", "salute",
    "put the palms together", "cross hands in front (say stop)", "sneeze/cough", "staggering",
    "falling", "touch head (headache)", "touch chest (stomachache/heart pain)",
    "touch back (backache)", "touch neck (neckache)", "nausea or vomiting condition",
    "use a fan (with hand or paper)/feeling warm", "punching/slapping other person",
    "kicking other person", "pushing other person", "pat on back of other person",
    "point finger at the other person", "hugging other person",
    "giving something to other person", "touch other person's pocket", "handshaking",
    "walking towards each other", "walking apart from each other",
    # NTU RGB+D 120 additions (A61-A120)
    "put on headphone", "take off headphone", "shoot at the basket", "bounce ball",
    "tennis bat swing", "juggling table tennis balls", "hush (quite)", "flick hair",
    "thumb up", "thumb down", "make ok sign", "make victory sign", "staple book",
    "counting money", "cutting nails", "cutting paper (using scissors)", "snapping fingers",
    "open bottle", "sniff (smell)", "squat down", "toss a coin", "fold paper", "ball up paper",
    "play magic cube", "apply cream on face", "apply cream on hand back", "put on bag",
    "take off bag", "put something into a bag", "take something out of a bag", "open a box",
    "move heavy objects", "shake fist", "throw up cap/hat", "hands up (both hands)",
    "cross arms", "arm circles", "arm swings", "running on the spot",
    "butt kicks (kick backward)", "cross toe touch", "side kick", "yawn", "stretch oneself",
    "blow nose", "hit other person with something", "wield knife towards other person",
    "knock over other person (hit with body)", "grab other person's stuff",
    "shoot at other person with a gun", "step on foot", "high-five", "cheers and drink",
    "carry something with other person", "take a photo of other person",
    "follow other person", "whisper in other person's ear", "exchange things with other person",
    "support somebody with hand", "finger-guessing game (playing rock-paper-scissors)")
assert len(ACTIONS) == 120


@dataclasses.dataclass(frozen=True)
class SampleName:
  setup: int
  camera: int
  subject: int
  replication: int
  action: int

  @property
  def label(self) -> int:
    return self.action - 1


def parse_name(path: str) -> SampleName:
  m = NAME_RE.search(os.path.basename(path))
  if not m:
    raise RawFormatError(f"{path}: file name does not contain an NTU sample name "
                         f"SsssCcccPpppRrrrAaaa")
  return SampleName(*(int(g) for g in m.groups()))


def in_split(name: SampleName, benchmark: str, subset: str) -> bool:
  """``benchmark`` in {xsub60, xview60, xsub120, xset120}; ``subset`` in {train, test}."""
  if benchmark == "xsub60":
    train = name.subject in XSUB60_TRAIN_SUBJECTS
  elif benchmark == "xview60":
    train = name.camera in XVIEW_TRAIN_CAMERAS
  elif benchmark == "xsub120":
    train = name.subject in XSUB120_TRAIN_SUBJECTS
  elif benchmark == "xset120":
    train = name.setup % 2 == 0
  else:
    raise ValueError(f"unknown NTU benchmark {benchmark!r}")
  if benchmark.endswith("60") and (name.setup > 17 or name.action > 60):
    return False
  return train == (subset == "train")


def read_skeleton(path: str) -> Dict[str, np.ndarray]:
  """Parses a ``.skeleton`` file into per-body tracks.

  Returns ``{"body_ids": (M,), "color": (M, F, 25, 2) pixels of the 1920x1080 colour frame,
  "xyz": (M, F, 25, 3) metres, "tracking": (M, F, 25) Kinect state 0/1/2 (0 = not tracked or
  body absent in that frame)}``, bodies in order of first appearance.
  """
  with open(path) as fh:
    lines = fh.read().split("\n")
  pos = 0

  def take(field: str, count: int, raw: bool = False) -> List:
    nonlocal pos
    while pos < len(lines) and not lines[pos].strip():
      pos += 1
    if pos >= len(lines):
      raise RawFormatError(f"{path}: truncated: expected {field} at line {pos + 1}, file ended")
    parts = lines[pos].split()
    if len(parts) != count:
      raise RawFormatError(f"{path}:{pos + 1}: {field}: expected {count} values, got "
                           f"{len(parts)}")
    pos += 1
    if raw:
      return parts
    try:
      return [float(p) for p in parts]
    except ValueError as e:
      raise RawFormatError(f"{path}:{pos}: {field}: not numbers ({e})") from None

  num_frames = int(take("frame_count", 1)[0])
  if num_frames <= 0:
    raise RawFormatError(f"{path}: frame_count is {num_frames}")
  tracks: Dict[int, dict] = {}
  for f in range(num_frames):
    num_bodies = int(take(f"body_count of frame {f}", 1)[0])
    for b in range(num_bodies):
      head = take(f"body header (frame {f}, body {b})", 10, raw=True)
      try:
        body_id = int(head[0])  # 64-bit tracking id: exact as int, not float
      except ValueError:
        raise RawFormatError(f"{path}:{pos}: bodyID {head[0]!r} is not an integer") from None
      nj = int(take(f"joint_count (frame {f}, body {b})", 1)[0])
      if nj != NUM_JOINTS:
        raise RawFormatError(f"{path}:{pos}: joint_count: expected {NUM_JOINTS} joints, got {nj}")
      joints = np.array([take(f"joint {j} (frame {f}, body {b})", 12) for j in range(nj)])
      t = tracks.setdefault(body_id, {
          "color": np.zeros((num_frames, NUM_JOINTS, 2), np.float32),
          "xyz": np.zeros((num_frames, NUM_JOINTS, 3), np.float32),
          "tracking": np.zeros((num_frames, NUM_JOINTS), np.float32)})
      t["xyz"][f] = joints[:, 0:3]
      t["color"][f] = joints[:, 5:7]
      t["tracking"][f] = joints[:, 11]
  if not tracks:
    raise RawFormatError(f"{path}: no body in any of its {num_frames} frames")
  ids = list(tracks)
  return {"body_ids": np.array(ids, np.int64),
          "color": np.stack([tracks[i]["color"] for i in ids]),
          "xyz": np.stack([tracks[i]["xyz"] for i in ids]),
          "tracking": np.stack([tracks[i]["tracking"] for i in ids])}


def tracking_scores(tracking: np.ndarray) -> np.ndarray:
  """Kinect tracking state -> score: tracked 1.0, inferred 0.5, not tracked / absent 0."""
  return np.where(tracking >= 2, 1.0, np.where(tracking >= 1, 0.5, 0.0)).astype(np.float32)


# -- Loader and TFDS builders -------------------------------------------------------------
def _ntu_videos(manual_dir: str) -> Dict[str, str]:
  return {os.path.basename(p)[:20]: p for p in common.rglob(manual_dir, "*_rgb.avi")}


NTU_BENCHMARKS = {"ntu60_xsub": "xsub60", "ntu60_xview": "xview60", "ntu120_xsub": "xsub120",
                  "ntu120_xset": "xset120"}


def _ntu_classes(benchmark: str) -> List[str]:
  """NTU60 benchmarks use actions 1-60, NTU120 all 120 (label = action number - 1)."""
  return list(ACTIONS[:60] if benchmark.endswith("60") else ACTIONS)


def _ntu_configs(description: str) -> List[Config]:
  return [Config(name=n, benchmark=b, description=description) for n, b in NTU_BENCHMARKS.items()]


MAX_PERSONS = 2  # NTU's interactions have two people (docs/datasets.md: persons)


def load_ntu_kinect(item: dict, options: FrameOptions) -> records.Sample:
  tracks = read_skeleton(item["skeleton"])
  scores = tracking_scores(tracks["tracking"])
  kp, scores = common.select_persons(tracks["color"], scores, MAX_PERSONS, rule="motion",
                                     source=item["skeleton"])
  if not item.get("video"):
    raise RawFormatError(f"{item['skeleton']}: no RGB video {item['key']}_rgb.avi in the "
                         f"manual dir")
  frames, fps = common.read_video(item["video"])
  kp = common.scale_keypoints(kp, COLOR_HW, frames.shape[1:3])
  f, kp, sc = common.finish(frames, kp, scores, fps, options)
  return records.Sample(f, kp, sc, item["label"], item["key"])


class NtuRgbd(common.Builder):
  """NTU RGB+D 60/120 from the Kinect ``.skeleton`` files (25 joints, colour-frame 2-D
  coordinates) and the RGB ``*_rgb.avi`` videos."""
  BUILDER_CONFIGS = _ntu_configs("Kinect v2 skeletons (25 joints) + RGB")
  NUM_JOINTS = len(NTU25)
  LOAD = staticmethod(load_ntu_kinect)
  LABEL_MAP_VERSION = LABEL_MAP_VERSION
  MANUAL_DOWNLOAD_INSTRUCTIONS = ("Put the NTU RGB+D *.skeleton files and *_rgb.avi videos "
                                  "(any folder layout) under --manual_dir.")

  def _classes(self):
    return _ntu_classes(self.builder_config.benchmark)

  def _items(self, manual_dir):
    videos = _ntu_videos(manual_dir)
    out = {"train": [], "test": []}
    for path in common.rglob(manual_dir, "*.skeleton"):
      try:
        name = parse_name(path)
      except RawFormatError as e:
        out["train"].append({"key": os.path.basename(path), "error": str(e)})
        continue
      key = os.path.basename(path)[:20]
      for subset in out:
        if in_split(name, self.builder_config.benchmark, subset):
          out[subset].append({"key": key, "skeleton": path, "video": videos.get(key),
                              "label": name.label})
    return out


class NtuRgbdHrnet(common.Builder):
  """NTU RGB+D 60/120 with the 2-D HRNet poses of pyskl (COCO-17) and the RGB videos."""
  BUILDER_CONFIGS = _ntu_configs("pyskl HRNet 2-D poses (COCO-17) + RGB")
  NUM_JOINTS = len(COCO17)
  LOAD = staticmethod(pyskl.load_video)
  LABEL_MAP_VERSION = LABEL_MAP_VERSION
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
      out[subset] = [pyskl.item(pkl, anns, fd, videos.get(fd[:20]), self.NUM_JOINTS,
                                max_persons=MAX_PERSONS) for fd in splits[key]]
    return out
