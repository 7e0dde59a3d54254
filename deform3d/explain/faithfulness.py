"""How far to trust an explanation: agreement with ground truth and a deletion test.

NumPy only (the model runs are in ``launch/explain.py --faithfulness``); docs/explain.md has the
table for the README's model. A method's per-clip joint scores are its ``(T, P * J)`` importance
summed over time; only the joints of persons present in the clip are ranked.

* **Agreement** with the joints that move for the clip's class (the embedded dataset's
  ``{split}-ground_truth.json``): ``hit_rate`` is the share of the ``n`` moving joints among the
  method's top ``n`` (chance: ``n / joints present``), ``auc`` the probability that a moving joint
  outranks a still one (ties count half; chance 0.5). Clips with no moving joint, or with every
  joint moving, have no AUC.
* **Deletion**: the ``k`` highest-ranked joints are removed from every frame (coordinates and
  score set to 0, as a keypoint the detector missed) and the clip is classified again; the same
  for ``k`` joints drawn at random among those present. A faithful method's deletions cost more
  accuracy and true-class probability than random ones.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from deform3d.explain.importance import softmax
from deform3d.train.report import spread


def joint_scores(importance: np.ndarray, valid: np.ndarray) -> np.ndarray:
  """``(B, T, N)`` importance -> ``(B, N)`` scores over time; joints not ``valid`` get -inf."""
  scores = np.asarray(importance, np.float64).sum(axis=1)
  return np.where(valid, scores, -np.inf)


def auc(scores: np.ndarray, positive: np.ndarray) -> float:
  """Mann-Whitney AUC of ``scores`` for the ``positive`` entries (NaN without both kinds)."""
  pos, neg = scores[positive], scores[~positive]
  if not len(pos) or not len(neg):
    return float("nan")
  greater = (pos[:, None] > neg[None, :]).sum()
  ties = (pos[:, None] == neg[None, :]).sum()
  return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def agreement(scores: np.ndarray, moving: np.ndarray, valid: np.ndarray) -> dict:
  """Per clip ``hit_rate``, its ``chance`` and ``auc`` of ``scores (B, N)`` against the
  ``moving (B, N)`` joints among the ``valid (B, N)`` ones."""
  hit, chance, aucs = [], [], []
  for s, m, v in zip(scores, moving.astype(bool), valid.astype(bool)):
    m = m & v
    n = int(m.sum())
    if n == 0:
      hit.append(np.nan), chance.append(np.nan), aucs.append(np.nan)
      continue
    top = np.argsort(-s, kind="stable")[:n]
    hit.append(m[top].mean())
    chance.append(n / v.sum())
    aucs.append(auc(s[v], m[v]))
  return {"hit_rate": np.array(hit), "chance": np.array(chance), "auc": np.array(aucs)}


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
  """Indices ``(B, k)`` of the ``k`` highest scores of each row (valid joints first)."""
  return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def random_k(valid: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
  """``k`` joints per clip drawn without replacement among the valid ones ``(B, k)``."""
  out = []
  for v in valid.astype(bool):
    choice = np.flatnonzero(v)
    out.append(rng.choice(choice, size=min(k, len(choice)), replace=False))
  return np.stack(out)


def delete_joints(keypoints: np.ndarray, joints: np.ndarray) -> np.ndarray:
  """Keypoints ``(B, [P,] T, J, D)`` with the ``joints (B, k)`` (indices into the ``P * J``
  joints of all persons) zeroed in every frame."""
  kp = np.array(keypoints, copy=True)
  squeeze = kp.ndim == 4
  if squeeze:
    kp = kp[:, None]
  num_joints = kp.shape[3]
  for b, row in enumerate(joints):
    for n in row:
      kp[b, n // num_joints, :, n % num_joints] = 0.0
  return kp[:, 0] if squeeze else kp


def deletion_summary(labels: np.ndarray, base_logits: np.ndarray, logits: np.ndarray) -> dict:
  """Accuracy and true-class probability before and after a deletion, and their drops."""
  labels = np.asarray(labels)
  p0 = softmax(base_logits)[np.arange(len(labels)), labels]
  p1 = softmax(logits)[np.arange(len(labels)), labels]
  acc0 = float((np.argmax(base_logits, -1) == labels).mean())
  acc1 = float((np.argmax(logits, -1) == labels).mean())
  return {"accuracy": acc1, "accuracy_drop": acc0 - acc1, "prob": float(p1.mean()),
          "prob_drop": float((p0 - p1).mean())}


def summarize(values: Sequence[float]) -> float:
  """Mean over clips, ignoring NaN (clips without an AUC)."""
  values = np.asarray(values, np.float64)
  return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")


def eval_frame_indices(num_available: int, num_frames: int) -> np.ndarray:
  """The frames one evaluation clip reads (``input_pipeline.frame_indices`` with offsets 0.5)."""
  pos = (np.arange(num_frames) + 0.5) * (num_available / num_frames)
  return np.minimum(np.floor(pos).astype(int), num_available - 1)


def flag_track(xy: np.ndarray, frame_size: tuple, num_frames: int) -> np.ndarray:
  """Raw-frame pixel centres ``xy (F, 2)`` of a frame of ``frame_size (H, W)`` -> ``(T, 2)``
  normalized ``[-1, 1]`` centres in the eval clip's ``num_frames`` frames (centre square crop,
  the ``align_corners=False`` convention of the keypoints)."""
  h, w = frame_size
  size = min(h, w)
  oy, ox = (h - size) // 2, (w - size) // 2
  xy = np.asarray(xy, np.float64)[eval_frame_indices(len(xy), num_frames)]
  return np.stack([(2 * (xy[:, 0] - ox) + 1) / size - 1, (2 * (xy[:, 1] - oy) + 1) / size - 1], -1)


def pixel_flag_share(attribution: np.ndarray, flag: np.ndarray, radius: float) -> tuple:
  """``(share, chance)``: the share of ``attribution (T, H, W)`` (non-negative) within
  ``radius`` (normalized units) of ``flag (T, 2)``, and the share of pixels there."""
  t, h, w = attribution.shape
  x = (np.arange(w) + 0.5) / w * 2 - 1
  y = (np.arange(h) + 0.5) / h * 2 - 1
  near = ((x[None, None, :] - flag[:, 0, None, None]) ** 2 +
          (y[None, :, None] - flag[:, 1, None, None]) ** 2) <= radius ** 2     # (T, H, W)
  total = attribution.sum()
  share = float((attribution * near).sum() / total) if total > 0 else float("nan")
  return share, float(near.mean())


def point_flag_share(points: np.ndarray, weight: np.ndarray, flag: np.ndarray,
                     radius: float) -> tuple:
  """``(share, chance)`` for sampling ``points (N, 3)`` (x, y, t in ``[-1, 1]``) with
  ``weight (N,)``: the weight share and the plain share of the points within ``radius`` of the
  flag ``(T, 2)`` in the frame nearest their time coordinate."""
  t = flag.shape[0]
  frame = np.clip(np.rint(((points[:, 2] + 1) * t - 1) / 2), 0, t - 1).astype(int)
  near = np.hypot(points[:, 0] - flag[frame, 0], points[:, 1] - flag[frame, 1]) <= radius
  total = weight.sum()
  share = float((weight * near).sum() / total) if total > 0 else float("nan")
  return share, float(near.mean())


def over_runs(reports: Sequence[dict]) -> dict:
  """``launch/explain.py --faithfulness`` reports of several models (e.g. seeds 0, 1, 2) as
  ``{method: {metric: {"median", "min", "max", "runs"}}}`` for the hit rate, its chance, the AUC
  and each deletion's true-class probability drop, and ``"ranks"``: each run's methods ordered by
  hit rate and by AUC, best first (does a conclusion hold on every model, or on one?)."""
  if not reports:
    raise ValueError("over_runs: no reports")
  methods = list(reports[0]["methods"])
  for i, r in enumerate(reports):
    if list(r["methods"]) != methods or r["ks"] != reports[0]["ks"]:
      raise ValueError(f"report {i}: methods {list(r['methods'])} ks {r['ks']}; report 0 has "
                       f"{methods} ks {reports[0]['ks']} (run --faithfulness alike)")
  out = {"ks": reports[0]["ks"], "runs": len(reports),
         "accuracy": spread([r["accuracy"] for r in reports]), "methods": {},
         "random": {k: spread([r["random"]["deletion"][str(k)]["prob_drop"] for r in reports])
                    for k in reports[0]["ks"]}}
  for m in methods:
    rows = [r["methods"][m] for r in reports]
    out["methods"][m] = {"hit_rate": spread([x["hit_rate"] for x in rows]),
                         "chance": spread([x["chance"] for x in rows]),
                         "auc": spread([x["auc"] for x in rows]),
                         "prob_drop": {k: spread([x["deletion"][str(k)]["prob_drop"]
                                                  for x in rows]) for k in out["ks"]}}
  out["ranks"] = {key: [sorted(methods, key=lambda m: -r["methods"][m][key]) for r in reports]
                  for key in ("hit_rate", "auc")}
  return out
