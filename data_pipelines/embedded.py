"""The embedded default dataset: procedurally rendered stick-figure actions with 2-D skeletons.

No download: clips are rendered with NumPy from fixed seeds and written with the same sharded
writer (``records.write_split``) as the real datasets. Each clip is ``num_frames`` RGB frames of a
COCO-17 stick figure performing one of the classes below, with random body size, position, speed,
phase and amplitude, camera jitter, a cluttered background, a faint low-contrast figure, and
keypoints with Gaussian noise and random dropout (score 0).

Fusion is needed by construction:
* ``wave_red_flag`` and ``wave_blue_flag`` have the same motion and differ only in the colour of
  the flag in the right hand: separable from RGB only. Every other class holds a red or blue
  flag half of the time, so the colour alone says nothing.
* The other actions differ in fine limb motion that is exact in the keypoints but drawn faintly
  over clutter at low resolution in the frames: easiest from pose.
* Interactions need the second person: in ``greeting_returned`` and ``greeting_ignored`` two
  people stand side by side and the first (the left one, written first) reaches out towards
  the other in the same way; in ``greeting_returned`` the other waves back (arm raised), in
  ``greeting_ignored`` it stands idle. Only the second person's (faintly drawn) pose tells them
  apart, so a one-person model (``max_persons=1``) cannot separate them from the pose. Every
  other class has one person; its records hold one (the pipeline pads the second as absent).

Usage: ``python -m data_pipelines.embedded --out data/embedded`` (the training script does this
by itself when the directory is missing).
"""
from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any, Callable, Iterator, Optional

import numpy as np

from data_pipelines import records
from data_pipelines.skeletons import COCO17, COCO17_BONES

CLASSES = ("wave_red_flag", "wave_blue_flag", "clap", "squat", "jump", "kick", "bow", "turn",
           "walk", "punch", "greeting_returned", "greeting_ignored")
# Two-person classes: the second person's action.
PARTNER = {"greeting_returned": "wave_back", "greeting_ignored": "idle"}
FLAG_COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220)}
SPLITS = {"train": (2000, 8, 101), "val": (300, 2, 202), "test": (500, 2, 303)}  # n, shards, seed
DATASET_VERSION = "1.3.0"  # 1.2.0: the two-person classes; 1.3.0: ground truth (same clips)
# A joint "moves" when its RMS displacement relative to the mid-hip, over the clip, is at least
# this fraction of the body height (ours). Joints an action does not animate move exactly 0;
# the smallest animated motion (eyes turning, ankles in a jump) is about 0.02.
MOVING_THRESHOLD = 0.015


def _limb(origin, angle, length, side):
  """End point of a limb from ``origin`` at ``angle`` from straight down, outward for ``side``."""
  return origin + np.asarray(length)[..., None] * np.stack([side * np.sin(angle), np.cos(angle)], -1)


def skeleton(action: str, phase: np.ndarray, u: np.ndarray, body: dict) -> np.ndarray:
  """COCO-17 joint positions ``(F, 17, 2)`` in pixels for ``action`` at phases ``phase (F,)``."""
  h, amp = body["height"], body["amplitude"]
  f = phase.shape[0]
  s = np.sin(phase)
  pos_s, neg_s = np.maximum(s, 0), np.maximum(-s, 0)
  bend = (1 - np.cos(phase)) / 2  # 0..1
  root = np.tile(np.array(body["root"], float), (f, 1))
  torso, width = np.full(f, 0.30 * h), np.full(f, 1.0)
  arm = {side: [np.full(f, 0.15), np.full(f, 0.05)] for side in (-1, 1)}  # upper, forearm rel.
  leg = {side: [np.full(f, 0.08), np.zeros(f)] for side in (-1, 1)}
  leg_scale = np.ones(f)
  head_drop = np.zeros(f)
  r, l = -1, 1  # person's right is image left (figure faces the camera)
  if action == "wave":
    arm[r] = [np.full(f, 2.6), 0.6 * amp * s]
  elif action == "clap":
    arm[r] = [np.full(f, 0.9), -(1.1 + 0.6 * amp * s)]
    arm[l] = [np.full(f, 0.9), -(1.1 + 0.6 * amp * s)]
  elif action == "squat":
    root[:, 1] += 0.14 * h * amp * bend
    leg_scale = 1 - 0.3 * amp * bend
    for side in (r, l):
      leg[side] = [0.08 + 0.5 * amp * bend, -0.9 * amp * bend]
      arm[side] = [np.full(f, 1.3), np.zeros(f)]
  elif action == "jump":
    root[:, 1] -= 0.16 * h * amp * pos_s
    for side in (r, l):
      arm[side] = [0.2 + 2.2 * pos_s, np.zeros(f)]
      leg[side] = [np.full(f, 0.08), -0.3 * pos_s]
  elif action == "kick":
    leg[r] = [0.08 + 1.2 * amp * pos_s, -0.4 * pos_s]
    arm[r] = [np.full(f, 0.5), np.zeros(f)]
    arm[l] = [np.full(f, 0.5), np.zeros(f)]
  elif action == "bow":
    torso = torso * (1 - 0.45 * amp * bend)
    head_drop = 0.08 * h * amp * bend
  elif action == "turn":
    width = np.cos(phase / 2)
  elif action == "walk":
    root[:, 0] += body["direction"] * 0.35 * h * (u - 0.5)
    for side in (r, l):
      leg[side] = [0.1 + side * 0.35 * amp * s, np.zeros(f)]
      arm[side] = [0.15 - side * 0.3 * amp * s, np.zeros(f)]
  elif action == "punch":
    arm[r] = [0.15 + 1.45 * amp * pos_s, np.zeros(f)]
    arm[l] = [0.15 + 1.45 * amp * neg_s, np.zeros(f)]
  elif action == "reach":         # the left arm (image right) out towards a person on the right
    arm[l] = [0.15 + 1.3 * amp * pos_s, -0.3 * amp * pos_s]
  elif action == "wave_back":     # the right arm (image left, towards the other) up, waving
    arm[r] = [np.full(f, 2.6), 0.6 * amp * s]
  elif action == "idle":          # arms down, a slight sway
    root[:, 0] += 0.02 * h * s
  else:
    raise ValueError(f"unknown action {action!r}")

  j = np.zeros((f, 17, 2))
  up = np.array([0.0, -1.0])
  hip_w, sh_w = 0.07 * h * width, 0.11 * h * width
  neck = root + torso[:, None] * up
  j[:, 11] = root + np.stack([hip_w, 0 * hip_w], -1)    # left hip (image right)
  j[:, 12] = root - np.stack([hip_w, 0 * hip_w], -1)    # right hip
  j[:, 5] = neck + np.stack([sh_w, 0 * sh_w], -1)        # left shoulder
  j[:, 6] = neck - np.stack([sh_w, 0 * sh_w], -1)        # right shoulder
  head = neck + (0.12 * h) * up + np.stack([0 * head_drop, head_drop], -1)
  j[:, 0] = head
  eye_w, ear_w = 0.025 * h * width, 0.05 * h * width
  j[:, 1] = head + np.stack([eye_w, -0.02 * h + 0 * eye_w], -1)
  j[:, 2] = head + np.stack([-eye_w, -0.02 * h + 0 * eye_w], -1)
  j[:, 3] = head + np.stack([ear_w, 0 * ear_w], -1)
  j[:, 4] = head + np.stack([-ear_w, 0 * ear_w], -1)
  for side, (sh, el, wr) in ((l, (5, 7, 9)), (r, (6, 8, 10))):
    a1, a2 = arm[side]
    j[:, el] = _limb(j[:, sh], a1, 0.15 * h, side)
    j[:, wr] = _limb(j[:, el], a1 + a2, 0.14 * h, side)
  for side, (hp, kn, an) in ((l, (11, 13, 15)), (r, (12, 14, 16))):
    b1, b2 = leg[side]
    j[:, kn] = _limb(j[:, hp], b1, 0.22 * h * leg_scale, side)
    j[:, an] = _limb(j[:, kn], b1 + b2, 0.22 * h * leg_scale, side)
  return j


def _draw_points(frames, pts, colour, radius):
  """Paints discs of ``radius`` pixels at points ``(F, P, 2)`` into ``frames`` in place."""
  f, size = frames.shape[0], frames.shape[1]
  offs = [(dx, dy) for dx in range(-radius, radius + 1) for dy in range(-radius, radius + 1)
          if dx * dx + dy * dy <= radius * radius + radius]
  fi = np.repeat(np.arange(f), pts.shape[1])
  base = np.rint(pts.reshape(-1, 2)).astype(int)
  for dx, dy in offs:
    x, y = base[:, 0] + dx, base[:, 1] + dy
    ok = (x >= 0) & (x < size) & (y >= 0) & (y < size)
    frames[fi[ok], y[ok], x[ok]] = colour


def joint_motion(person: np.ndarray, height: float) -> np.ndarray:
  """RMS displacement ``(17,)`` of each joint of a noise-free skeleton ``(F, 17, 2)`` relative to
  its mid-hip over the clip, in units of the body ``height``: what the action animates, without
  the body's own travel (walk, jump, sway) or the camera jitter."""
  rel = person - person[:, 11:13].mean(axis=1, keepdims=True)
  return np.sqrt(((rel - rel.mean(axis=0)) ** 2).sum(-1).mean(0)) / height


def render_clip(label: int, rng: np.random.Generator, num_frames: int = 32, size: int = 56,
                truth: bool = False):
  """Renders one clip of class ``label``: frames (F, S, S, 3) uint8, keypoints (M, F, 17, 2) and
  scores (M, F, 17) of its ``M`` persons (2 for the classes of ``PARTNER``, else 1).

  ``truth=True`` also returns the clip's ground truth (it draws no random numbers, so the clip is
  the same): ``motion (M, 17)`` (``joint_motion``), ``moving (M, 17)`` (motion at least
  ``MOVING_THRESHOLD``), and ``flag``: ``None`` or the flag's ``colour``, ``cue`` (True when the
  colour is the class, the wave classes; else a distractor) and ``xy (F, 2)``, the pixel centre
  of its disc in every frame."""
  name = CLASSES[label]
  two = name in PARTNER
  action = "reach" if two else "wave" if name.startswith("wave") else name
  body = {"height": rng.uniform(0.55, 0.8) * size, "amplitude": rng.uniform(0.8, 1.2),
          "direction": rng.choice([-1, 1])}
  if two:  # two smaller people side by side, facing the camera
    body["height"] = rng.uniform(0.5, 0.62) * size
  x = rng.uniform(0.25, 0.38) if two else rng.uniform(0.38, 0.62)
  body["root"] = (x * size, rng.uniform(0.82, 0.92) * size - 0.44 * body["height"])
  cycles = rng.uniform(1.0, 2.0)
  u = np.arange(num_frames) / num_frames
  phase = 2 * np.pi * cycles * u + rng.uniform(0, 2 * np.pi)
  people = [skeleton(action, phase, u, body)]
  heights = [body["height"]]
  if two:
    other = {"height": body["height"] * rng.uniform(0.9, 1.1), "amplitude": rng.uniform(0.8, 1.2),
             "direction": 1}
    other["root"] = (body["root"][0] + rng.uniform(0.32, 0.4) * size,
                     body["root"][1] + rng.uniform(-0.03, 0.03) * size)
    people.append(skeleton(PARTNER[name], phase + rng.uniform(-0.3, 0.3), u, other))
    heights.append(other["height"])
  motion = np.stack([joint_motion(p, hgt) for p, hgt in zip(people, heights)])
  jitter = np.cumsum(rng.normal(0, 0.6, (num_frames, 2)), axis=0)
  people = [p + jitter[:, None] for p in people]
  joints = people[0]

  # Background: gradient + clutter lines, rendered larger and cropped with the camera jitter.
  big = size + 16
  yy, xx = np.mgrid[0:big, 0:big] / big
  bg = (rng.uniform(60, 190, 3) + rng.uniform(-50, 50, 3) * xx[..., None]
        + rng.uniform(-50, 50, 3) * yy[..., None])
  for _ in range(rng.integers(4, 9)):
    a, b = rng.uniform(0, big, 2), rng.uniform(0, big, 2)
    t = np.linspace(0, 1, 60)[:, None]
    p = np.rint(a + (b - a) * t).astype(int).clip(0, big - 1)
    bg[p[:, 1], p[:, 0]] = rng.uniform(40, 220, 3)
  bg = np.clip(bg + rng.normal(0, 6, bg.shape), 0, 255)
  frames = np.empty((num_frames, size, size, 3), np.float64)
  for i in range(num_frames):
    ox, oy = np.clip(np.rint(8 + jitter[i]).astype(int), 0, 16)
    frames[i] = bg[oy:oy + size, ox:ox + size]

  t = np.linspace(0, 1, 12)[None, None, :, None]
  bones = np.array(COCO17_BONES)
  for person in people:
    figure = np.clip(bg.mean((0, 1)) + rng.choice([-1, 1]) * rng.uniform(35, 60), 0, 255)
    a, b = person[:, bones[:, 0]][:, :, None], person[:, bones[:, 1]][:, :, None]
    seg = (a + (b - a) * t).reshape(num_frames, -1, 2)
    _draw_points(frames, seg, figure, radius=0)
    _draw_points(frames, person[:, :1], figure, radius=2)

  flag = None
  if name == "wave_red_flag":
    flag = "red"
  elif name == "wave_blue_flag":
    flag = "blue"
  elif rng.random() < 0.5:
    flag = rng.choice(["red", "blue"])
  flag_truth = None
  if flag is not None:
    up = np.array([0.0, -0.08 * body["height"]])
    flag_pts = joints[:, 10:11] + up
    _draw_points(frames, flag_pts, FLAG_COLOURS[flag], radius=3)
    flag_truth = {"colour": str(flag), "cue": name.startswith("wave"),
                  "xy": np.rint(flag_pts[:, 0]).astype(int)}

  frames = np.clip(frames + rng.normal(0, 4, frames.shape), 0, 255).astype(np.uint8)
  people = np.stack(people)                                               # (M, F, 17, 2)
  kp = people + rng.normal(0, 0.6, people.shape)
  scores = rng.uniform(0.6, 1.0, people.shape[:3])
  drop = rng.random(people.shape[:3]) < 0.05
  scores[drop] = 0.0
  kp[drop] = 0.0
  if truth:
    return (frames, kp.astype(np.float32), scores.astype(np.float32),
            {"motion": motion, "moving": motion >= MOVING_THRESHOLD, "flag": flag_truth})
  return frames, kp.astype(np.float32), scores.astype(np.float32)


def samples(split: str, num: int, seed: int, num_frames: int = 32, size: int = 56,
            truth: Optional[dict] = None) -> Iterator[records.Sample]:
  """The clips of ``split``; with a dict ``truth``, each clip's ground truth is put there under
  its id (``ground_truth_entry``)."""
  rng = np.random.default_rng(seed)
  labels = np.arange(num) % len(CLASSES)
  rng.shuffle(labels)
  for i, label in enumerate(labels):
    frames, kp, scores, t = render_clip(int(label), rng, num_frames, size, truth=True)
    clip_id = f"embedded/{split}/{i:05d}"
    if truth is not None:
      truth[clip_id] = ground_truth_entry(t, frames.shape[1:3])
    yield records.Sample(frames, kp, scores, int(label), clip_id)


def ground_truth_entry(t: dict, frame_size) -> dict:
  """One clip's ground truth as JSON: moving joint indices and motion per person, the flag, the
  raw frame size ``(H, W)`` its pixel positions refer to."""
  flag = t["flag"]
  return {"frame_size": [int(x) for x in frame_size],
          "moving": [np.flatnonzero(m).tolist() for m in t["moving"]],
          "motion": np.round(t["motion"], 4).tolist(),
          "flag": None if flag is None else {"colour": flag["colour"], "cue": bool(flag["cue"]),
                                             "xy": flag["xy"].tolist()}}


def ground_truth_path(data_dir: str, split: str) -> str:
  return os.path.join(data_dir, f"{split}-ground_truth.json")


def read_ground_truth(data_dir: str, split: str) -> dict:
  """``{clip id: {"frame_size": [H, W], "moving": [[joint, ...] per person], "motion": [[17
  floats] per person], "flag": None | {"colour", "cue", "xy" (F, 2) pixels}}}`` of a split
  (dataset >= 1.3.0)."""
  path = ground_truth_path(data_dir, split)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no ground truth; the embedded dataset writes it from "
                            "version 1.3.0 on (rebuild: python -m data_pipelines.embedded "
                            f"--out {data_dir})")
  with open(path) as fh:
    return json.load(fh)["clips"]


def build(out_dir: str, sizes: dict = SPLITS, num_frames: int = 32, size: int = 56,
          verbose: bool = True, parallel: bool = True,
          meanwhile: Optional[Callable[[], Any]] = None) -> Any:
  """Writes every split of the embedded dataset to ``out_dir`` (deterministic).

  With ``parallel`` and more than one core available, the first split is written here while
  a child Python process writes the others (each split its own seeded stream: the same bytes
  as one process, tested). ``meanwhile``: work for this process while the data is written
  (``launch/train.py`` compiles the training step): one child process then writes every split;
  without ``parallel`` it runs after the splits. Returns its result (or None).
  """
  records.write_classes(out_dir, CLASSES)
  splits = list(sizes.items())
  result = None
  if parallel and len(splits) > 1 and len(os.sched_getaffinity(0)) > 1:
    # Without other work here: the first split here, the others in a child. With it: one child
    # writes them all in turn, leaving the other core to ``meanwhile`` (on 2 cores, a child per
    # group was no faster: docs/experiments/2026-12-02-first-run-fixed-costs).
    groups = [dict(splits)] if meanwhile else [dict(splits[:1]), dict(splits[1:])]
    children = []
    try:
      for group in (groups if meanwhile else groups[1:]):
        children.append((list(group), _start_child(out_dir, group, num_frames, size, verbose)))
      if meanwhile:
        result = meanwhile()
      else:
        _build_splits(out_dir, groups[0], num_frames, size, verbose)
    except BaseException:  # an error or Ctrl-C here stops the children too
      for _, child in children:
        child.terminate()
        child.wait()
      raise
    failed = [(names, code) for names, code in ((n, c.wait()) for n, c in children) if code]
    if failed:
      raise RuntimeError(f"embedded dataset: the child process writing splits {failed[0][0]} to "
                         f"{out_dir} failed (exit code {failed[0][1]}; its error is printed "
                         "above)")
  else:
    _build_splits(out_dir, sizes, num_frames, size, verbose)
    if meanwhile:
      result = meanwhile()
  with open(os.path.join(out_dir, "VERSION"), "w") as fh:
    fh.write(DATASET_VERSION + "\n")
  return result


def _start_child(out_dir: str, sizes: dict, num_frames: int, size: int, verbose: bool):
  """A child Python process running ``_build_splits`` on ``sizes`` (``subprocess.Popen``)."""
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
  args = json.dumps([out_dir, sizes, num_frames, size, verbose])
  return subprocess.Popen([sys.executable, "-c", "import json, sys; from data_pipelines "
                           "import embedded; embedded._build_splits(*json.loads(sys.argv[1]))",
                           args], env=env)


def _build_splits(out_dir: str, sizes: dict, num_frames: int, size: int, verbose: bool) -> None:
  for split, (num, shards, seed) in sizes.items():
    start = time.time()
    truth = {}
    summary = records.write_split(out_dir, split,
                                  samples(split, num, seed, num_frames, size, truth),
                                  num_shards=shards, num_classes=len(CLASSES),
                                  num_joints=len(COCO17))
    with open(ground_truth_path(out_dir, split), "w") as fh:
      json.dump({"joints": list(COCO17), "moving_threshold": MOVING_THRESHOLD,
                 "motion": "RMS displacement relative to the mid-hip / body height",
                 "flag_xy": "pixels of the raw frame (before the input pipeline's crop)",
                 "clips": truth}, fh)
    if verbose:
      print(f"embedded dataset: wrote {split}: {summary['num_examples']} clips in {shards} shards "
            f"({time.time() - start:.1f}s) -> {out_dir}", flush=True)


def ensure(out_dir: str, meanwhile: Optional[Callable[[], Any]] = None) -> Any:
  """Builds the dataset unless ``out_dir`` already holds this version of it; returns the result
  of ``meanwhile``, run while the data is written (``build``) or at once if it exists."""
  version = os.path.join(out_dir, "VERSION")
  if os.path.exists(version) and open(version).read().strip() == DATASET_VERSION:
    return meanwhile() if meanwhile else None
  return build(out_dir, meanwhile=meanwhile)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default="data/embedded")
  parser.add_argument("--preview", default=None, help="also save a PNG contact sheet here")
  args = parser.parse_args()
  build(args.out)
  if args.preview:
    save_preview(args.preview)


def save_preview(path: str, frames_per_clip: int = 6) -> None:
  """A PNG with one row per class: frames with the keypoints drawn over them."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  rng = np.random.default_rng(0)
  fig, axes = plt.subplots(len(CLASSES), frames_per_clip, figsize=(frames_per_clip * 1.4,
                                                                   len(CLASSES) * 1.4))
  for label, row in enumerate(axes):
    frames, kp, scores = render_clip(label, rng)
    for k, ax in enumerate(row):
      i = k * frames.shape[0] // frames_per_clip
      ax.imshow(frames[i])
      for m, colour in zip(range(len(kp)), ("lime", "magenta")):
        ok = scores[m, i] > 0
        ax.scatter(kp[m, i, ok, 0], kp[m, i, ok, 1], s=3, c=colour)
      ax.set_xticks([]), ax.set_yticks([])
      if k == 0:
        ax.set_ylabel(CLASSES[label], fontsize=6)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


if __name__ == "__main__":
  main()
