"""Numbers of an explanation: joint, frame and sampling-point importance from the sown maps.

Everything here is NumPy on the output of ``deform3d.models.attention_maps`` for one clip, so it
runs anywhere (no TensorFlow, no accelerator). Definitions (docs/explain.md):

* **Joint importance** ``(T, J)``: in each block's local joint stride attention the frame's
  cross-modal token attends over every joint group; ``joint_importance`` is that attention
  weight per joint, averaged over groups and heads. Each frame's row is normalized to sum 1, so
  it is the share of the cross token's joint attention that each joint receives. The **uniform
  share** is the same quantity for uniform attention inside each group (groups of different
  sizes give their joints different shares); ``lift = importance / uniform share`` is above 1
  where the model attends more than chance. Blocks see fewer temporal tokens after each temporal
  merge; a token's value is repeated over the input frames it covers.
* **Frame importance** ``(T,)``: in each block's temporal stride attention, the attention the
  first cross-modal token of a window pays to each frame of the window, averaged over heads and queries; the
  windows' values are divided by the number of windows, so the row sums to 1 over the clip.
* **Sampling points**: the 3-D deformable attention's sampled locations ``(G, Ns, 3)`` (x, y in
  ``[-1, 1]`` of the frame, z in ``[-1, 1]`` of time) of every block, with the attention they
  receive from all queries, averaged over the heads that read their channel group and
  normalized over the sampled keys (the cross-modal tokens, also keys, are left out).

Several persons (keypoints ``(P, T, J, 3)``): the joints of the ``P`` persons are laid side by
side, ``P * J`` "joints" (``person_joints`` gives the matching keypoints, names and bones); the
uniform share counts each person's own groups, and an absent person's joints get share 0.

Which blocks: every block's maps are returned; the summary (``mean``) averages the blocks in
``blocks``, by default only the first. Only there is joint token ``j`` still joint ``j``'s own
embedding; deeper tokens have been mixed with their group and with other frames by the
attention before them, so attention to token ``j`` no longer means attention to joint ``j``
(the argument for attention rollout, Abnar & Zuidema 2020). Measured on the embedded model in
docs/explain.md.
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np

from deform3d.models.stride_attention import person_groups, persons_present


def _block_ids(maps: Mapping[str, np.ndarray]) -> list:
  ids = sorted({int(k.split("/")[0][len("block"):]) for k in maps if k.startswith("block")})
  if not ids:
    raise ValueError("explain: the maps hold no block{i}/... entries; pass the output of "
                     "deform3d.models.attention_maps")
  return ids


def token_frames(model) -> list:
  """Input frames covered by one temporal token of each block: ``stem_temporal_stride`` times
  the product of the temporal strides of the blocks before it."""
  span, out = model.stem_temporal_stride, []
  for s in model.temporal_strides:
    out.append(span)
    span *= s
  return out


def _num_frames(maps, model, num_frames: Optional[int]) -> int:
  """The clip's input frame count: ``num_frames`` when given, else the first block's token
  count times the stem's temporal stride (exact unless the stem padded the clip)."""
  if num_frames is not None:
    return int(num_frames)
  first = _block_ids(maps)[0]
  return np.shape(maps[f"block{first}/joint_attn/joint_importance"])[1] * \
      model.stem_temporal_stride


def _expand(values: np.ndarray, span: int, num_frames: int) -> np.ndarray:
  """Token axis 0 -> input frames: each token's value over the ``span`` frames it covers."""
  return np.repeat(values, span, axis=0)[:num_frames]


def uniform_joint_share(num_joints: int, window: int, stride: int, persons: int = 1,
                        present: Optional[Sequence[bool]] = None) -> np.ndarray:
  """Joint shares ``(P * J,)`` of the cross token when its attention is uniform in every group
  (each person's joints grouped separately). With ``present`` (per person) the groups of absent
  persons do not count, as in the model; when nobody is present, all count."""
  idx = person_groups(num_joints, min(window, num_joints), stride, persons)
  person = np.repeat(np.arange(persons), len(idx) // persons)
  counts = np.ones(persons, bool) if present is None or not np.any(present) else \
      np.asarray(present, bool)
  share = np.zeros(persons * num_joints)
  for row, m in zip(idx, person):
    if counts[m]:
      valid = row[row >= 0]
      share[valid] += 1.0 / (1 + len(valid))
  return share / share.sum()


def person_joints(keypoints: np.ndarray, joint_names: Sequence[str], bones: Sequence) -> tuple:
  """One clip's keypoints ``(T, J, 3)`` or ``(P, T, J, 3)`` as ``(T, P * J, 3)`` with the
  joint names (``"p2:left_wrist"`` for ``P > 1``), the bones of every person, and the persons
  present (any joint with a non-zero score), for the plots and ``explain_clip``."""
  keypoints = np.asarray(keypoints)
  if keypoints.ndim == 3:
    return keypoints, list(joint_names), list(bones), [True]
  p, t, j, d = keypoints.shape
  flat = keypoints.transpose(1, 0, 2, 3).reshape(t, p * j, d)
  names = [f"p{m + 1}:{n}" for m in range(p) for n in joint_names]
  all_bones = [(a + m * j, b + m * j) for m in range(p) for a, b in bones]
  return flat, names, all_bones, [bool(x) for x in persons_present(keypoints)]


def _select(blocks, available):
  chosen = list(available[:1]) if blocks is None else list(blocks)
  missing = sorted(set(chosen) - set(available))
  if missing or not chosen:
    raise ValueError(f"explain: blocks {chosen} not among the model's blocks {list(available)}")
  return [available.index(b) for b in chosen]


def joint_importance(maps, model, index: int = 0, blocks: Optional[Sequence[int]] = None, *,
                     num_frames: Optional[int] = None,
                     present: Optional[Sequence[bool]] = None) -> dict:
  """Joint importance ``(T, J)`` (``(T, P * J)`` for ``P`` persons, ``present`` per person) of
  clip ``index``: every block's (``per_block``), the mean over ``blocks`` (default: the first
  block), its uniform share and the lift of each joint (0 for an absent person's joints).
  ``num_frames``: the clip's frame count (see ``_num_frames``)."""
  persons = 1 if present is None else len(present)
  per_block, uniform = [], []
  t = _num_frames(maps, model, num_frames)
  for i in _block_ids(maps):
    key = f"block{i}/joint_attn/joint_importance"
    imp = np.asarray(maps[key][index], np.float64).mean(axis=1)   # (T_i, J)
    imp = imp / np.maximum(imp.sum(axis=1, keepdims=True), 1e-12)
    per_block.append(_expand(imp, token_frames(model)[i], t))
    uniform.append(uniform_joint_share(imp.shape[1] // persons, model.joint_window,
                                       model.joint_strides[i], persons, present))
  rows = _select(blocks, _block_ids(maps))
  mean = np.mean([per_block[r] for r in rows], axis=0)
  share = np.mean([uniform[r] for r in rows], axis=0)
  uniform = np.stack(uniform)
  lift = lambda a, b: np.divide(a, b, out=np.zeros_like(a), where=b > 0)
  return {"per_block": np.stack(per_block), "uniform_per_block": uniform, "mean": mean,
          "uniform_share": share, "lift": lift(mean.mean(axis=0), share),
          "lift_per_block": lift(np.stack(per_block).mean(axis=1), uniform)}


def frame_importance(maps, model, index: int = 0, blocks: Optional[Sequence[int]] = None, *,
                     num_frames: Optional[int] = None) -> dict:
  """Frame importance ``(T,)`` of clip ``index`` per block and averaged over ``blocks``
  (default: the first); each row sums to 1."""
  per_block = []
  t = _num_frames(maps, model, num_frames)
  for i in _block_ids(maps):
    att = np.asarray(maps[f"block{i}/temporal_attn/attn/attention"][index], np.float64)
    att = att[0]                       # the cross token: (windows, heads, q, k)
    windows, _, _, w = att.shape
    received = att.mean(axis=(1, 2)).reshape(windows * w) / windows
    t_tokens = -(-t // token_frames(model)[i])
    received = received[:t_tokens]     # drop the padding of a last partial window
    span = token_frames(model)[i]
    per_block.append(_expand(received, span, t) / span)
  per_block = np.stack(per_block)
  per_block = per_block / per_block.sum(axis=1, keepdims=True)
  rows = _select(blocks, _block_ids(maps))
  return {"per_block": per_block, "mean": per_block[rows].mean(axis=0)}


def sampling_points(maps, model, index: int = 0) -> list:
  """Per block: ``{"points": (G, Ns, 3), "weight": (G, Ns)}`` (weights of a block sum to 1)."""
  out = []
  for i in _block_ids(maps):
    key = f"block{i}/cross_attn/sampling_points"
    if key not in maps:
      continue
    points = np.asarray(maps[key][index], np.float64)                     # (G, Ns, 3)
    att = np.asarray(maps[f"block{i}/cross_attn/attn/attention"][index], np.float64)
    g, ns = points.shape[:2]
    # Keys are the Ns sampled tokens, then (paper design) the cross-modal tokens.
    per_head = att[..., :ns].mean(axis=1)                                 # (heads, Ns)
    weight = per_head.reshape(g, -1, per_head.shape[-1]).mean(axis=1)      # (G, Ns)
    out.append({"block": i, "points": points, "weight": weight / weight.sum()})
  return out


def point_frame(z: np.ndarray, num_frames: int) -> np.ndarray:
  """Time coordinate in ``[-1, 1]`` (``align_corners=False``) -> fractional input frame."""
  return ((z + 1.0) * num_frames - 1.0) / 2.0


def explain_clip(maps, model, index: int = 0, *, blocks: Optional[Sequence[int]] = None,
                 num_frames: Optional[int] = None, joint_names: Optional[Sequence[str]] = None,
                 logits: Optional[np.ndarray] = None, class_names: Optional[Sequence[str]] = None,
                 present: Optional[Sequence[bool]] = None) -> dict:
  """Everything of one clip in plain Python types (the JSON written by ``launch/explain.py``);
  the summary fields average ``blocks`` (default: the first block). Several persons: pass
  ``present`` and the names of ``person_joints``."""
  joints = joint_importance(maps, model, index, blocks, num_frames=num_frames, present=present)
  frames = frame_importance(maps, model, index, blocks, num_frames=num_frames)
  points = sampling_points(maps, model, index)
  names = list(joint_names) if joint_names is not None else [
      f"joint{j}" for j in range(joints["mean"].shape[1])]
  out = {
      "blocks": list(blocks) if blocks is not None else _block_ids(maps)[:1],
      "joint_names": names,
      "joint_importance": joints["mean"].tolist(),
      "joint_importance_per_block": joints["per_block"].tolist(),
      "joint_share": joints["mean"].mean(axis=0).tolist(),
      "joint_uniform_share": joints["uniform_share"].tolist(),
      "joint_lift": joints["lift"].tolist(),
      "joint_lift_per_block": joints["lift_per_block"].tolist(),
      "frame_importance": frames["mean"].tolist(),
      "frame_importance_per_block": frames["per_block"].tolist(),
      "sampling_points": [{"block": p["block"], "points_xyz": p["points"].tolist(),
                           "weight": p["weight"].tolist()} for p in points],
  }
  if logits is not None:
    out["prediction"] = top_predictions(logits[index], class_names)
  return out


def softmax(logits: np.ndarray) -> np.ndarray:
  """Class probabilities of ``logits (..., C)`` in float64."""
  z = np.asarray(logits, np.float64)
  z = np.exp(z - z.max(axis=-1, keepdims=True))
  return z / z.sum(axis=-1, keepdims=True)


def top_predictions(logits: np.ndarray, class_names: Optional[Sequence[str]] = None,
                    k: int = 5) -> list:
  """The ``k`` most probable classes of one clip's ``logits (C,)``: ``[{"class", "name",
  "prob"}, ...]``, most probable first (``name`` is the class index as text without
  ``class_names``)."""
  probs = softmax(logits)
  label = (lambda c: class_names[c]) if class_names is not None else str
  return [{"class": int(c), "name": label(int(c)), "prob": float(probs[c])}
          for c in np.argsort(-probs)[:k]]
