"""Small files in the exact raw formats of NTU RGB+D, Penn Action, FineGYM and pyskl.

Each writer returns the numbers it wrote so tests compare the converted records with the source.
Videos are smooth gradients with a moving bright square (survive MPEG-4 + JPEG); poses are random.
"""
from __future__ import annotations

import json
import os
import pickle

import numpy as np

from data_pipelines.datasets import ntu


def write_video(path: str, frames: np.ndarray, fps: int = 30) -> None:
  """Writes uint8 ``(F, H, W, 3)`` frames as an MPEG-4 (.mp4/.avi) video."""
  import av

  with av.open(path, "w") as container:
    stream = container.add_stream("mpeg4", rate=fps)
    stream.height, stream.width = frames.shape[1:3]
    stream.pix_fmt = "yuv420p"
    stream.bit_rate = 4_000_000
    for f in frames:
      for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f),
                                                             format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)

def frames(rng, n, h, w):
  yy, xx = np.mgrid[0:h, 0:w]
  base = (rng.uniform(60, 120, 3) + 80 * (xx / w)[..., None] + 40 * (yy / h)[..., None])
  out = np.repeat(base[None], n, 0)
  for i in range(n):
    x0 = (i * 3) % max(1, w - 8)
    out[i, h // 3:h // 3 + 8, x0:x0 + 8] = 250
  return np.clip(out, 0, 255).astype(np.uint8)


def write_skeleton(path, bodies, num_frames, present, trailing_newline=True):
  """``bodies``: list of (body_id, color (F, 25, 2), xyz (F, 25, 3), tracking (F, 25));
  ``present[b]``: frames where body b appears (other frames omit it; no body = missing frame)."""
  lines = [str(num_frames)]
  for f in range(num_frames):
    here = [b for b in range(len(bodies)) if f in present[b]]
    lines.append(str(len(here)))
    for b in here:
      bid, color, xyz, tracking = bodies[b]
      lines.append(f"{bid} 0 1 1 1 1 0 0.01 -0.02 2")
      lines.append("25")
      for j in range(25):
        x, y, z = xyz[f, j]
        cx, cy = color[f, j]
        lines.append(f"{x:.7f} {y:.7f} {z:.7f} {cx / 4.5:.5f} {cy / 2.5:.5f} {cx:.4f} {cy:.4f} "
                     f"0.1 0.2 0.3 0.4 {int(tracking[f, j])}")
  with open(path, "w") as fh:
    fh.write("\r\n".join(lines) + ("\r\n" if trailing_newline else ""))


def ntu_sample(rng, root, name, num_frames=12, video_hw=(54, 96), bodies=2):
  """An NTU sample: ``.skeleton`` with up to three bodies and a matching ``_rgb.avi``.

  Body 1, the main one, moves most and is present in frames 0..F-3 (the last two frames are
  missing); body 2 moves half as much and is seen in frames 1-3 only; body 3 stands still from
  frame 2 on, fully tracked (the largest total score, the least motion: a "most active" rule
  drops it, a "largest score" rule would keep it). The bodies appear in this order.
  ``bodies=0`` writes frames with nobody.
  Returns the main body's numbers and ``persons``: each body's ``color`` and ``scores``, most
  active first (the order the converter keeps them in)."""
  os.makedirs(os.path.join(root, "skeletons"), exist_ok=True)
  os.makedirs(os.path.join(root, "videos"), exist_ok=True)
  sx, sy = 1920 / video_hw[1], 1080 / video_hw[0]
  color = np.stack([rng.uniform(10, video_hw[1] - 10, (num_frames, 25)) * sx,
                    rng.uniform(5, video_hw[0] - 5, (num_frames, 25)) * sy], -1)
  color = np.round(color, 4)
  xyz = rng.normal(0, 1, (num_frames, 25, 3))
  tracking = rng.choice([2, 2, 2, 1, 0], (num_frames, 25))
  still = np.round(np.broadcast_to(color[0] * 0.9 + 20, color.shape), 4)
  table = [(72057594037931101, color, xyz, tracking, set(range(num_frames - 2))),
           (72057594037931102, np.round(color[::-1] * 0.5, 4), xyz, np.full_like(tracking, 2),
            {1, 2, 3}),
           (72057594037931103, still, xyz, np.full_like(tracking, 2), set(range(2, num_frames)))]
  table = table[:bodies]
  write_skeleton(os.path.join(root, "skeletons", name + ".skeleton"),
                 [t[:4] for t in table], num_frames, [t[4] for t in table])
  video = frames(rng, num_frames, *video_hw)
  write_video(os.path.join(root, "videos", name + "_rgb.avi"), video, fps=30)
  persons = []
  for _, c, _, tr, seen in table:
    sc = ntu.tracking_scores(tr)
    sc[[f for f in range(num_frames) if f not in seen]] = 0
    persons.append({"color": c.astype(np.float32), "scores": sc})
  main = persons[0] if persons else {"color": None, "scores": None}
  return {"color": main["color"], "scores": main["scores"], "persons": persons, "video": video,
          "label": ntu.parse_name(name).label, "video_hw": video_hw}


def penn_sample(rng, root, stem, action, train, n=10, hw=(40, 52)):
  import scipy.io
  from PIL import Image

  os.makedirs(os.path.join(root, "labels"), exist_ok=True)
  fdir = os.path.join(root, "frames", stem)
  os.makedirs(fdir, exist_ok=True)
  video = frames(rng, n, *hw)
  for i, f in enumerate(video):
    Image.fromarray(f).save(os.path.join(fdir, f"{i + 1:06d}.jpg"), quality=98)
  x = np.round(rng.uniform(0, hw[1] - 1, (n, 13)), 3)
  y = np.round(rng.uniform(0, hw[0] - 1, (n, 13)), 3)
  vis = rng.integers(0, 2, (n, 13))
  scipy.io.savemat(os.path.join(root, "labels", stem + ".mat"), {
      "action": action, "pose": "front", "x": x, "y": y, "visibility": vis,
      "train": 1 if train else -1, "bbox": np.zeros((n, 4)), "dimensions": [hw[0], hw[1], n],
      "nframes": n})
  return {"x": x, "y": y, "vis": vis, "video": video}


def pyskl_annotation(rng, frame_dir, label, total_frames, img_shape, num_persons=2):
  """pyskl's annotation of ``num_persons`` (0 = nobody found); person ``m``'s scores are scaled
  by ``0.5 ** m``, so the persons are in order of total score."""
  kp = rng.uniform(0, 1, (num_persons, total_frames, 17, 2)) * np.array(img_shape[::-1])
  sc = rng.uniform(0.3, 1.0, (num_persons, total_frames, 17))
  sc *= 0.5 ** np.arange(num_persons)[:, None, None]
  return {"frame_dir": frame_dir, "label": label, "img_shape": tuple(img_shape),
          "original_shape": tuple(img_shape), "total_frames": total_frames,
          "keypoint": kp.astype(np.float16).astype(np.float32), "keypoint_score":
          sc.astype(np.float32)}


def write_pickle(path, split, annotations):
  with open(path, "wb") as fh:
    pickle.dump({"split": split, "annotations": annotations}, fh)


def finegym_dir(rng, root, n_train=3, n_test=2):
  """Gym99 files: two event videos, element lists, annotation json, categories, gym_hrnet.pkl."""
  os.makedirs(os.path.join(root, "videos"), exist_ok=True)
  hw = (48, 64)
  info, anns, lists, videos, windows = {}, [], {"train": [], "test": []}, {}, {}
  for v, vid in enumerate(["vidA-x_1", "vidB_22"]):
    video = frames(rng, 90, *hw)  # 3 s at 30 fps
    write_video(os.path.join(root, "videos", vid + ".mp4"), video, fps=30)
    videos[vid] = video
    info[vid] = {"E_000000_000003": {"event": 1, "timestamps": [[0.1, 2.9]], "segments": {}}}
    for e in range(3):
      seg = f"A_{e:04d}_{e + 1:04d}"
      t0, t1 = 0.5 * e, 0.5 * e + 0.6 + 0.2 * e  # windows of 18, 24 and 30 frames
      info[vid]["E_000000_000003"]["segments"][seg] = {"stages": 1, "timestamps": [[t0, t1]]}
      eid = f"{vid}_E_000000_000003_{seg}"
      label = int(rng.integers(0, 99))
      lists["train" if v == 0 or e == 0 else "test"].append((eid, label))
      windows[eid] = (vid, 0.1 + t0, 0.1 + t1)  # seconds in the event video
      n = len([i for i in range(90) if 0.1 + t0 <= i / 30 < 0.1 + t1])
      anns.append(pyskl_annotation(rng, eid, label, n, hw))
  with open(os.path.join(root, "gym99_train_element_v1.1.txt"), "w") as fh:
    fh.writelines(f"{e} {l}\n" for e, l in lists["train"])
  with open(os.path.join(root, "gym99_val_element.txt"), "w") as fh:
    fh.writelines(f"{e} {l}\n" for e, l in lists["test"])
  with open(os.path.join(root, "finegym_annotation_info_v1.1.json"), "w") as fh:
    json.dump(info, fh)
  with open(os.path.join(root, "gym99_categories.txt"), "w") as fh:
    fh.writelines(f"Clabel: {i}; set: {i // 10}; Glabel: {i + 3}; (VT) element number {i}\n"
                  for i in range(99))
  write_pickle(os.path.join(root, "gym_hrnet.pkl"),
               {"train": [e for e, _ in lists["train"]], "val": [e for e, _ in lists["test"]]},
               anns)
  return {"lists": lists, "anns": {a["frame_dir"]: a for a in anns}, "info": info,
          "videos": videos, "windows": windows}
