"""Explanation methods beside raw attention, each giving a joint-by-time importance.

``explain_batch(method, model, variables, frames, keypoints, target)`` returns, for a batch,
``joints (B, T, P * J)`` (input frames x the joints of all persons, larger = more important for
the ``target`` class's logit) and, where the method has one, an RGB importance. Methods
(docs/explain.md compares them against the embedded dataset's ground truth):

* ``attention``: the first block's joint attention of the cross token, as a lift over the uniform
  share (``importance.joint_importance``; what the heatmap PNGs have always shown).
* ``rollout``: attention rollout (Abnar & Zuidema, 2020) through every block. A relevance matrix
  from the current tokens to the input tokens starts as the identity and every attention
  ``A`` (mean over heads) updates it as ``R <- (R + A R) / 2`` (the residual); it follows the
  pose stream through the deformable attention (the cross tokens' keys: the other frames' cross
  tokens and the sampled RGB tokens), the joint groups (the cross token's output is the mean
  over its groups, as in the model), the temporal windows and the temporal merges (a merged
  token draws equally on its frames). The classifier reads the mean of the last cross tokens,
  so their mean row is the answer. Sources: every input joint token (``joints``), every frame's
  initial cross token (it carries the frame's pooled RGB) and the sampled RGB tokens of every
  block (``points``: per block ``(B, Ns)``). A path through the RGB tokens is not traced back
  to the pose (ours: the RGB tokens are a source here).
* ``grad_attention``: the same propagation with every attention replaced by its
  gradient-weighted form ``mean_heads(max(0, A * dlogit/dA))`` and the rule ``R <- R + A R``
  (Chefer, Gur & Wolf, ICCV 2021, "generic attention-model explainability").
* ``integrated_gradients`` (Sundararajan et al., 2017): along the straight path from a
  motionless baseline (every joint at its mean position over the clip's frames where it was
  seen; every pixel at its mean over the clip) to the clip, ``steps`` midpoints. A joint's
  importance in a frame is ``|a_x| + |a_y|`` of its coordinates' attributions; ``frames (B, T)``
  is the sum of ``|a|`` over each frame's pixels. The attributions of frames and keypoints
  together sum to ``logit(clip) - logit(baseline)`` (completeness; tested).

``attention_grads`` gives the gradient of the target logit with respect to every sown
attention map. Gradient methods run the plain model (``fast=False``: the same parameters and
function, every attention computed as the definition reads).
"""
from __future__ import annotations

import functools

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from deform3d.explain.importance import joint_importance, sampling_points
from deform3d.models import convert
from deform3d.models.layers import MultiHeadAttention
from deform3d.models.stride_attention import person_groups, persons_present

METHODS = ("attention", "rollout", "grad_attention", "integrated_gradients")


def plain(model):
  """The plain form of ``model`` (same function): plain modules, blocks in a Python loop
  (``block{i}`` module paths; variables convert with ``convert.for_model``)."""
  return model.clone(fast=False, remat=False, scan=False, merge_in_block=model.merges_in_block)


@functools.partial(jax.jit, static_argnums=0)
def _logits(model, variables, frames, keypoints):
  return model.apply(variables, frames, keypoints, train=False)


def _target_logit(logits, target):
  return jnp.take_along_axis(logits, target[:, None].astype(jnp.int32), axis=1).sum()


@functools.partial(jax.jit, static_argnums=0)
def attention_grads(model, variables, frames, keypoints, target):
  """``(logits, maps, grads, points)``: every sown attention map ``{"block0/joint_attn/attn":
  (...), ...}`` of the plain model, the gradient of the summed ``target`` logits (one class per
  clip) with respect to it (a zero perturbation added after each softmax), and the deformable
  sampling points ``{"block0/cross_attn": (B, G, Ns, 3), ...}``."""
  model = plain(model)
  variables = convert.for_model(variables, model)

  def run(deltas):
    """The model with ``deltas`` (or nothing) added after each softmax: logits and the flat
    ``intermediates`` it sowed."""
    def add_delta(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      if (deltas is not None and isinstance(context.module, MultiHeadAttention)
          and context.method_name == "softmax"):
        out = out + deltas["/".join(context.module.path)]
      return out
    with nn.intercept_methods(add_delta):
      logits, state = model.apply(variables, frames, keypoints, train=False,
                                  mutable=["intermediates"])
    return logits, flax.traverse_util.flatten_dict(state["intermediates"], sep="/")

  def sown(flat, suffix):
    return {k[:-len(suffix)]: v[0] for k, v in flat.items() if k.endswith(suffix)}

  def logit(deltas):
    logits, flat = run(deltas)
    return _target_logit(logits, target), (logits, flat)

  # One forward pass: the maps (sown before the zero perturbation) come out as auxiliary data.
  shapes = sown(jax.eval_shape(lambda: run(None))[1], "/attention")
  zeros = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)
  grads, (logits, flat) = jax.grad(logit, has_aux=True)(zeros)
  return logits, sown(flat, "/attention"), grads, sown(flat, "/sampling_points")


def _mix(att, grad, heads_axis):
  """Mean over heads of the attention or of its gradient-weighted positive part."""
  att = np.asarray(att, np.float64)
  if grad is not None:
    att = np.maximum(att * np.asarray(grad, np.float64), 0.0)
  return att.mean(axis=heads_axis)


def propagate(model, maps, keypoints, grads=None) -> dict:
  """Relevance of the input tokens for the classifier (``rollout``, or with ``grads`` the
  gradient-weighted ``grad_attention``); see the module docstring. ``maps``/``grads`` as from
  ``attention_grads`` (keys without ``/attention``), NumPy or JAX arrays of a batch.

  Returns ``joints (B, T_in, P * J)``, ``cross (B, T_in)`` (the initial cross tokens) and
  ``points``: per block with RGB, ``(B, Ns)`` relevance of its sampled tokens."""
  if model.design != "paper":
    raise ValueError("explain: rollout follows the paper's block (design='paper'), got "
                     f"design={model.design!r}")
  keypoints = np.asarray(keypoints)
  if keypoints.ndim == 4:
    keypoints = keypoints[:, None]
  b, persons, t_in, j = keypoints.shape[:4]
  pj, k = persons * j, model.num_cross_tokens
  present = persons_present(keypoints) if persons > 1 else np.ones((b, 1), bool)
  t0 = np.shape(maps["block0/joint_attn/attn"])[1]
  # Number of sampled keys per block: key count minus the cross tokens (T_i * K) of the block.
  ns_list, t = [], t0
  for i in range(model.depth):
    if model.use_rgb:
      ns_list.append(np.shape(maps[f"block{i}/cross_attn/attn"])[-1] - t * k)
    t = -(-t // model.temporal_strides[i])
  offsets = np.cumsum([0, t0 * pj, t0] + ns_list)
  size = int(offsets[-1])
  rollout = grads is None
  alpha, beta = (0.5, 0.5) if rollout else (1.0, 1.0)
  g = (lambda key: None) if rollout else (lambda key: grads[key])

  r_pose = np.zeros((b, t0, pj, size))
  r_pose[:, np.arange(t0)[:, None], np.arange(pj)[None], np.arange(t0 * pj).reshape(t0, pj)] = 1
  r_cross = np.zeros((b, t0, k, size))
  r_cross[:, np.arange(t0), :, offsets[1] + np.arange(t0)] = 1
  t = t0
  for i in range(model.depth):
    if model.use_rgb:  # deformable attention: the cross tokens' rows (the last T * K queries)
      key = f"block{i}/cross_attn/attn"
      a = _mix(np.asarray(maps[key])[:, :, -t * k:], None if rollout else
               np.asarray(g(key))[:, :, -t * k:], 1)                          # (B, TK, Ns + TK)
      ns = ns_list[i]
      rc = r_cross.reshape(b, t * k, size)
      y = np.einsum("bqk,bks->bqs", a[..., ns:], rc)
      y[..., offsets[2 + i]:offsets[3 + i]] += a[..., :ns]
      r_cross = (alpha * rc + beta * y).reshape(b, t, k, size)
    # Joint stride attention over [cross mean, the joints of each group].
    key = f"block{i}/joint_attn/attn"
    a = _mix(maps[key], g(key), 3)                                       # (B, T, Ng, 1+w, 1+w)
    idx = person_groups(j, min(model.joint_window, j), model.joint_strides[i], persons)
    tokens = np.concatenate([np.broadcast_to(r_cross.mean(axis=2)[:, :, None, None],
                                             (b, t, idx.shape[0], 1, size)),
                             r_pose[:, :, np.maximum(idx, 0)] * (idx >= 0)[..., None]], axis=3)
    y = np.einsum("btgqk,btgks->btgqs", a, tokens)
    person_of_group = np.repeat(np.arange(persons), idx.shape[0] // persons)
    weights = present[:, person_of_group] | ~present.any(axis=1, keepdims=True)   # (B, Ng)
    y_cross = (y[:, :, :, 0] * weights[:, None, :, None]).sum(2) / np.maximum(
        weights.sum(1), 1)[:, None, None]
    gi, si = np.nonzero(idx >= 0)
    order = np.argsort(idx[gi, si])
    y_pose = y[:, :, gi[order], si[order] + 1]                           # (B, T, P * J, S)
    r_cross = alpha * r_cross + beta * y_cross[:, :, None]
    r_pose = alpha * r_pose + beta * y_pose
    # Temporal stride attention per token over windows of frames, then the temporal merge.
    key = f"block{i}/temporal_attn/attn"
    a = _mix(maps[key], g(key), 3)                                        # (B, N, nw, w, w)
    nw, w = a.shape[2], a.shape[3]
    r = np.concatenate([r_cross, r_pose], axis=2)
    padded = np.zeros((b, nw * w) + r.shape[2:])
    padded[:, :t] = r
    y = np.einsum("bnvqk,bvkns->bvqns", a, padded.reshape(b, nw, w, -1, size))
    r = alpha * r + beta * y.reshape(b, nw * w, -1, size)[:, :t]
    stride = model.temporal_strides[i]
    if stride > 1:
      pad = (-t) % stride  # the last frame repeated, as TemporalMerge does
      r = np.concatenate([r] + [r[:, -1:]] * pad, axis=1)
      t = r.shape[1] // stride
      r = r.reshape((b, t, stride) + r.shape[2:]).mean(axis=2)
    r_cross, r_pose = r[:, :, :k], r[:, :, k:]
  final = r_cross.mean(axis=(1, 2))                                        # (B, S)
  span = model.stem_temporal_stride
  joints = np.repeat(final[:, :t0 * pj].reshape(b, t0, pj), span, axis=1)[:, :t_in]
  cross = np.repeat(final[:, offsets[1]:offsets[2]], span, axis=1)[:, :t_in]
  points = [final[:, offsets[2 + i]:offsets[3 + i]] for i in range(len(ns_list))]
  return {"joints": joints, "cross": cross, "points": points}


def motionless(frames, keypoints):
  """The integrated-gradients baseline: every pixel at its mean over the clip's frames, every
  joint at its mean position over the frames where its score is non-zero (scores kept)."""
  frames_base = jnp.broadcast_to(frames.mean(axis=1, keepdims=True), frames.shape)
  seen = (keypoints[..., 2:3] > 0) if keypoints.shape[-1] > 2 else jnp.ones_like(keypoints[..., :1])
  t_axis = keypoints.ndim - 3
  mean = (keypoints[..., :2] * seen).sum(t_axis, keepdims=True) / jnp.maximum(
      seen.sum(t_axis, keepdims=True), 1)
  xy = jnp.where(seen, jnp.broadcast_to(mean, keypoints[..., :2].shape), keypoints[..., :2])
  return frames_base, jnp.concatenate([xy, keypoints[..., 2:]], axis=-1)


@functools.partial(jax.jit, static_argnums=(0, 5))
def integrated_gradients(model, variables, frames, keypoints, target, steps: int = 16):
  """``(attr_frames, attr_keypoints, logits, logit_gap)``: the attributions
  ``(x - x') * mean_alpha grad(x' + alpha (x - x'))`` (``steps`` midpoints) of the target logit
  for frames and keypoints (the score channel, not varied, gets 0), the clips' logits, and
  ``target logit(clip) - target logit(baseline)`` per clip."""
  base_f, base_k = motionless(frames, keypoints)
  diff_f, diff_k = frames - base_f, keypoints - base_k

  def logit(f, kp):
    return _target_logit(model.apply(variables, f, kp, train=False), target)

  grad = jax.grad(logit, argnums=(0, 1))

  def step(carry, alpha):
    gf, gk = grad(base_f + alpha * diff_f, base_k + alpha * diff_k)
    return (carry[0] + gf, carry[1] + gk), None

  alphas = (jnp.arange(steps, dtype=jnp.float32) + 0.5) / steps
  (gf, gk), _ = jax.lax.scan(step, (jnp.zeros_like(frames), jnp.zeros_like(keypoints)), alphas)
  logits = model.apply(variables, frames, keypoints, train=False)
  base = model.apply(variables, base_f, base_k, train=False)
  pick = lambda z: jnp.take_along_axis(z, target[:, None].astype(jnp.int32), axis=1)[:, 0]
  return diff_f * gf / steps, diff_k * gk / steps, logits, pick(logits) - pick(base)


def _joints_of(keypoint_attr):
  """``(B, [P,] T, J, D)`` attributions -> ``(B, T, P * J)`` of ``|a_x| + |a_y|``."""
  a = np.abs(np.asarray(keypoint_attr)[..., :2]).sum(-1)
  if a.ndim == 4:                                                         # (B, P, T, J)
    a = a.transpose(0, 2, 1, 3).reshape(a.shape[0], a.shape[2], -1)
  return a


def explain_batch(method: str, model, variables, frames, keypoints, target=None, *,
                  steps: int = 16) -> dict:
  """Importance of a batch by ``method`` (``METHODS``) for the ``target`` classes (default: the
  predicted ones): ``{"joints": (B, T, P * J), "logits": (B, classes), ...}`` plus, per method,
  the sampling points ``point_xyz (B, N, 3)`` with their ``point_weight (B, N)`` (attention,
  rollout, grad_attention; the last two also ``points``, per block ``(B, Ns)``, and ``cross``),
  or ``frames (B, T)`` and ``pixels (B, T, H, W)`` with ``attribution_sum`` and ``logit_gap``
  (integrated gradients). For ``attention`` the joints are the first block's lift. Larger is
  more important; the scales of different methods are not comparable, only their rankings."""
  if method not in METHODS:
    raise ValueError(f"explain: method must be one of {METHODS}, got {method!r}")
  frames, keypoints = jnp.asarray(frames), jnp.asarray(keypoints)
  if target is None:
    target = jnp.argmax(_logits(model, variables, frames, keypoints), axis=-1)
  target = jnp.asarray(target, jnp.int32)
  if method == "integrated_gradients":
    af, ak, logits, gap = integrated_gradients(model, variables, frames, keypoints, target,
                                               steps)
    total = np.asarray(af.sum(axis=(1, 2, 3, 4)) + ak.reshape(ak.shape[0], -1).sum(-1))
    if not np.isfinite(total).all():  # a NaN gradient (e.g. of an absent person) spoils a clip
      raise FloatingPointError(
          f"integrated_gradients: non-finite attributions for clips "
          f"{np.flatnonzero(~np.isfinite(total)).tolist()} of the batch")
    pixels = np.abs(np.asarray(af)).sum(axis=-1)                           # (B, T, H, W)
    return {"joints": _joints_of(ak), "frames": pixels.sum(axis=(2, 3)), "pixels": pixels,
            "logits": np.asarray(logits), "attribution_sum": total,
            "logit_gap": np.asarray(gap)}
  if method == "attention":
    from deform3d.models import attention_maps
    logits, sown = attention_maps(plain(model), variables, frames, keypoints)
    logits, kp, sown = np.asarray(logits), np.asarray(keypoints), jax.tree.map(np.asarray, sown)
    present = persons_present(kp) if kp.ndim == 5 and kp.shape[1] > 1 else [None] * len(kp)
    out = []
    for i in range(kp.shape[0]):
      imp = joint_importance(sown, model, i, num_frames=frames.shape[1], present=present[i])
      share = imp["uniform_share"]
      out.append(np.divide(imp["mean"], share, out=np.zeros_like(imp["mean"]),
                           where=share > 0))
    result = {"joints": np.stack(out), "logits": logits}
    if model.use_rgb:  # every block's sampling points by the attention they receive
      per_clip = [sampling_points(sown, model, i) for i in range(kp.shape[0])]
      result["point_xyz"] = np.stack([np.concatenate([p["points"].reshape(-1, 3) for p in c])
                                      for c in per_clip])
      result["point_weight"] = np.stack([np.concatenate(
          [p["weight"].ravel() / len(c) for p in c]) for c in per_clip])
    return result
  logits, amaps, grads, points = attention_grads(model, variables, frames, keypoints, target)
  logits, amaps = np.asarray(logits), jax.tree.map(np.asarray, amaps)
  result = propagate(model, amaps, keypoints,
                     None if method == "rollout" else jax.tree.map(np.asarray, grads))
  result["logits"] = logits
  if result["points"]:  # the sampled token's relevance, shared by its groups' points
    xyz = [np.asarray(points[f"block{i}/cross_attn"]) for i in range(len(result["points"]))]
    result["point_xyz"] = np.concatenate([p.reshape(p.shape[0], -1, 3) for p in xyz], axis=1)
    result["point_weight"] = np.concatenate(
        [np.repeat(r[:, None] / p.shape[1], p.shape[1], axis=1).reshape(r.shape[0], -1)
         for r, p in zip(result["points"], xyz)], axis=1)
  return result


def as_explanation(result: dict, index: int, present, explanation: dict) -> dict:
  """The fields of ``importance.explain_clip``'s dict that a method replaces, for clip
  ``index`` of ``explain_batch``'s ``result``: joint importance (each frame's row normalized to
  sum 1), its mean share and lift over a uniform spread over the joints of the persons
  ``present``, frame importance (RGB attributions for integrated gradients, else the joints'
  and initial cross tokens' relevance per frame) and, for the propagation methods, the sampling
  points' relevance (a sampled token's relevance shared by its groups' points)."""
  joints = np.maximum(np.asarray(result["joints"][index], np.float64), 0.0)
  rows = joints / np.maximum(joints.sum(axis=1, keepdims=True), 1e-30)
  num = joints.shape[1]
  valid = np.repeat(np.asarray(present, bool), num // len(present))
  uniform = valid / valid.sum()
  share = joints.sum(axis=0) / max(joints.sum(), 1e-30)
  lift = np.divide(share, uniform, out=np.zeros_like(share), where=uniform > 0)
  if "frames" in result:
    frames = np.asarray(result["frames"][index], np.float64)
  else:
    frames = joints.sum(axis=1) + np.asarray(result["cross"][index], np.float64)
  out = {"joint_importance": rows.tolist(), "joint_share": share.tolist(),
         "joint_uniform_share": uniform.tolist(), "joint_lift": lift.tolist(),
         "joint_importance_per_block": [], "joint_lift_per_block": [],
         "frame_importance": (frames / max(frames.sum(), 1e-30)).tolist(),
         "frame_importance_per_block": [], "blocks": "all"}
  if "points" in result:
    points = []
    for p in explanation["sampling_points"]:
      w = np.asarray(result["points"][p["block"]][index], np.float64)
      g = np.shape(p["points_xyz"])[0]
      w = np.broadcast_to(w / max(w.sum(), 1e-30) / g, (g,) + w.shape)
      points.append({**p, "weight": w.tolist()})
    out["sampling_points"] = points
  return out
