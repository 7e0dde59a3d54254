"""A user's own clip: its poses from a file or the pose estimator, and the evaluation
preprocessing of a config (``launch/predict.py`` is the command).

``read_poses`` reads a pyskl annotation pickle (what ``launch/extract_poses.py`` writes), that
script's JSON, COCO keypoint results (``[{"image_id": frame, "keypoints": [x, y, v] * J,
"score"}, ...]``) or an NTU ``.skeleton``, and checks it against the model's joint count and the
video's frame count; ``estimate_poses`` runs ``launch/extract_poses.py`` in the pose environment;
``preprocess`` writes the clip as a one-clip split and reads it back through the input pipeline,
so it gets exactly the evaluation preprocessing. Errors are ``InputError`` naming the file.
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile

import numpy as np

from data_pipelines import input_pipeline, records
from data_pipelines.datasets import common, ntu, pyskl
from data_pipelines.datasets.common import RawFormatError


class InputError(ValueError):
  """Bad user input; the message names the file and what is wrong."""


def read_video(path: str):
  """Frames ``(F, H, W, 3)`` uint8 and the frame rate of ``path`` (PyAV)."""
  try:
    return common.read_video(path)
  except RawFormatError as e:
    raise InputError(str(e)) from e


def read_poses(path: str, num_joints: int, max_persons: int, num_frames: int, frame_hw):
  """``(kp (M, F, J, 2) pixels of the video, scores (M, F, J))`` from a pose file, checked
  against the model's joint count and the video's ``num_frames`` and scaled from the file's
  image size to the video's ``frame_hw``."""
  if not os.path.exists(path):
    raise InputError(f"{path}: pose file not found")
  shape = None
  try:
    if path.endswith(".pkl"):
      _, anns = pyskl.load(path)
      ann = _one_annotation(path, anns)
      kp, sc = pyskl.persons(ann, num_joints, max_persons, source=path)
      shape, frames = tuple(ann["img_shape"]), int(ann["total_frames"])
    elif path.endswith(".skeleton"):
      tracks = ntu.read_skeleton(path)
      if tracks["color"].shape[2] != num_joints:
        raise InputError(f"{path}: an NTU .skeleton has {tracks['color'].shape[2]} Kinect "
                         f"joints per body; the model reads {num_joints} joints "
                         f"(config.dataset.joint_layout)")
      kp, sc = common.select_persons(tracks["color"], ntu.tracking_scores(tracks["tracking"]),
                                     max_persons, rule="motion", source=path)
      shape, frames = ntu.COLOR_HW, kp.shape[1]
    elif path.endswith(".json"):
      kp, sc, shape, frames = _json_poses(path, num_joints, max_persons, num_frames)
    else:
      raise InputError(f"{path}: unknown pose file type (expected .pkl, .json or .skeleton)")
  except RawFormatError as e:
    raise InputError(str(e)) from e
  if frames != num_frames:
    raise InputError(f"{path}: {frames} frames of poses, but the video has {num_frames} "
                     "frames; poses must cover every frame of the video")
  if shape is not None and tuple(shape) != tuple(frame_hw):
    kp = common.scale_keypoints(kp, tuple(shape), tuple(frame_hw))
  if not (sc > 0).any():
    raise InputError(f"{path}: no person (every keypoint score is 0)")
  return np.asarray(kp, np.float32), np.asarray(sc, np.float32)


def _one_annotation(path, anns):
  if len(anns) != 1:
    raise InputError(f"{path}: {len(anns)} annotations; a pose file for one video holds one")
  return next(iter(anns.values()))


def _json_poses(path, num_joints, max_persons, num_frames):
  """launch/extract_poses.py's JSON, or COCO keypoint results (one entry per person and frame,
  ``image_id`` = 0-based frame index)."""
  with open(path) as fh:
    try:
      data = json.load(fh)
    except json.JSONDecodeError as e:
      raise InputError(f"{path}: not valid JSON ({e})") from e
  if isinstance(data, dict) and "keypoint" in data:
    kp = common.field_array(data, "keypoint", np.float32, path)
    sc = common.field_array(data, "keypoint_score", np.float32, path)
    if kp.ndim != 4 or kp.shape[2:] != (num_joints, 2) or sc.shape != kp.shape[:3]:
      raise InputError(f"{path}: field 'keypoint' must be (M, frames, {num_joints}, 2) with "
                       f"'keypoint_score' (M, frames, {num_joints}), got {kp.shape} and "
                       f"{sc.shape}")
    kp, sc = common.select_persons(kp, sc, max_persons, rule="score", source=path)
    return kp, sc, tuple(data["img_shape"]), kp.shape[1]
  if not isinstance(data, list) or not all(isinstance(d, dict) for d in data):
    raise InputError(f"{path}: expected extract_poses' JSON (a dict with 'keypoint') or COCO "
                     "keypoint results (a list of {'image_id', 'keypoints', 'score'})")
  per_frame = {}
  for i, d in enumerate(data):
    k = common.field_array({"keypoints": d.get("keypoints", [])}, "keypoints", np.float32,
                           f"{path}: entry {i}")
    if k.size != 3 * num_joints:
      raise InputError(f"{path}: entry {i}: field 'keypoints' must hold {num_joints} joints x "
                       f"(x, y, v) = {3 * num_joints} numbers, got {k.size}")
    per_frame.setdefault(int(d["image_id"]), []).append((float(d.get("score", 1.0)),
                                                         k.reshape(num_joints, 3)))
  if per_frame and (min(per_frame) < 0 or max(per_frame) >= num_frames):
    raise InputError(f"{path}: 'image_id' must be a frame index in [0, {num_frames}), got "
                     f"{min(per_frame)} to {max(per_frame)}")
  m = max(len(v) for v in per_frame.values()) if per_frame else 0
  kp = np.zeros((max(m, 1), num_frames, num_joints, 2), np.float32)
  sc = np.zeros((max(m, 1), num_frames, num_joints), np.float32)
  for f, people in per_frame.items():
    for p, (_, k) in enumerate(sorted(people, key=lambda x: -x[0])):
      kp[p, f], sc[p, f] = k[:, :2], k[:, 2]
  kp, sc = common.select_persons(kp, sc, max_persons, rule="score", source=path)
  return kp, sc, None, num_frames


def estimate_poses(video: str, out_dir: str, python: str, root: str) -> str:
  """Runs ``root``/launch/extract_poses.py on ``video`` with the pose environment's ``python``
  (writing into ``out_dir``); returns the annotation's path."""
  if not os.path.exists(python):
    raise InputError(f"{video}: no --poses given and no pose environment at {python}; create "
                     "it (README, 'Your own clip'): python3 -m venv .venv-poses && "
                     ".venv-poses/bin/pip install -r launch/requirements-poses.txt")
  prefix = os.path.join(out_dir, "poses")
  proc = subprocess.run([python, os.path.join(root, "launch", "extract_poses.py"), "--video",
                         video, "--out", prefix], capture_output=True, text=True)
  if proc.returncode != 0:
    lines = [l for l in (proc.stderr + proc.stdout).splitlines() if "extract_poses" in l]
    raise InputError(lines[-1] if lines else proc.stderr[-2000:])
  print(proc.stdout.strip(), flush=True)
  return prefix + ".pkl"


def preprocess(config, frames, kp, sc, fps, name, num_classes):
  """The evaluation preprocessing of ``config``: ``(frames (K, T, H, W, 3), keypoints
  (K, [P,] T, J, 3))`` model inputs of the ``eval_clips`` clips, and their uint8 pixels."""
  f, k, s = common.finish(frames, kp, sc, fps, common.FrameOptions(short_side=256, fps=None))
  with tempfile.TemporaryDirectory() as tmp:
    records.write_split(tmp, "predict", [records.Sample(f, k, s, 0, name)], num_shards=1,
                        num_classes=num_classes, num_joints=kp.shape[2])
    ds = input_pipeline.make_dataset(
        tmp, "predict", num_frames=config.num_frames, image_size=config.image_size,
        num_joints=kp.shape[2], batch_size=1, train=False,
        num_clips=config.dataset.get("eval_clips", 1), cache=False,
        max_persons=config.dataset.get("max_persons", 1))
    batch = next(iter(input_pipeline.iterate(ds, source=(tmp, "predict"))))
  clips, keypoints = batch["frames"][0], batch["keypoints"][0]
  return clips, keypoints, input_pipeline.to_uint8(clips)
