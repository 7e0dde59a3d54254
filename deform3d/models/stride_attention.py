"""Local joint stride attention and temporal stride attention (Kim et al.), plain form.

Token layout of the joint attention: ``z (B, T, 1 + P * J, C)``; index 0 is the frame's
cross-attention token, then the ``J`` joint (pose) tokens of each of the ``P`` persons, person by
person. The temporal attention runs over any token axis ``(B, T, N, C)``. Speed rewrites:
``fast.py``.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from deform3d.models.embeddings import pad_frames
from deform3d.models.layers import MultiHeadAttention, layer_norm

Dtype = Any


def joint_groups(num_joints: int, window: int, stride: int):
  """Static NumPy index table ``(num_groups, window)`` of strided joint groups, ``-1`` = padding.

  Joints are laid out in blocks of ``window * stride``; inside a block, group ``r`` takes every
  ``stride``-th joint starting at ``r``. ``stride=1`` gives contiguous windows, ``stride>1``
  dilated ones, so stacking blocks with different strides mixes near and far joints.
  """
  if window < 1 or stride < 1:
    raise ValueError(f"joint_groups: window and stride must be >= 1, got {window}, {stride}")
  block = window * stride
  padded = -(-num_joints // block) * block
  idx = np.arange(padded).reshape(padded // block, window, stride).transpose(0, 2, 1)
  idx = idx.reshape(-1, window)
  idx = np.where(idx < num_joints, idx, -1)
  keep = (idx >= 0).any(axis=1)
  return idx[keep]


def person_groups(num_joints: int, window: int, stride: int, persons: int):
  """``joint_groups`` of each of ``persons`` people whose ``num_joints`` joints follow each other
  (person ``m``'s joints are ``m * num_joints + i``): ``(persons * Ng, window)``, person by
  person. No group mixes two persons."""
  idx = joint_groups(num_joints, window, stride)
  return np.concatenate([np.where(idx >= 0, idx + m * num_joints, -1) for m in range(persons)])


def joint_plans(num_joints: int, window: int, strides, persons: int = 1):
  """``person_groups`` of each stride in ``strides``, padded with all ``-1`` groups to one
  shape, ``(len(strides), persons * Ng, window)`` int32: the joint strides of a stage of
  scanned blocks as data (``JointStrideAttention(plan=...)``). Each person's groups are padded
  alike, so group ``g`` belongs to person ``g // Ng``; a padding group holds no joint and is
  left out of the cross token's mean, so it changes nothing."""
  window = min(window, num_joints)
  tables = [joint_groups(num_joints, window, s) for s in strides]
  ng = max(t.shape[0] for t in tables)
  plans = []
  for t in tables:
    t = np.concatenate([t, np.full((ng - t.shape[0], window), -1, t.dtype)])
    plans.append(np.concatenate([np.where(t >= 0, t + m * num_joints, -1)
                                 for m in range(persons)]))
  return np.stack(plans).astype(np.int32)


def persons_present(keypoints):
  """Which persons of keypoints ``(..., P, T, J, D)`` are in the clip: any joint with a non-zero
  score (channel 2) in any frame -> ``(..., P)``. All-zero persons are padding. The model's
  masks and the explanations' uniform shares both use this rule."""
  return (keypoints[..., 2] > 0).any(axis=(-2, -1))


def group_mean(x, group_weights):
  """The cross token's new value from its outputs in every group, ``x (B, T, Ng, ...)`` ->
  ``(B, T, 1, ...)``: their mean, or with ``group_weights (B, Ng)`` (1 for a group of a present
  person, 0 for an absent one) the mean over the weighted groups (0 when no group counts)."""
  if group_weights is None:
    return x.mean(axis=2, keepdims=True)
  w = group_weights.astype(x.dtype).reshape(group_weights.shape[:1] + (1, -1) + (1,) * (x.ndim - 3))
  total = jnp.maximum(group_weights.astype(x.dtype).sum(axis=1), 1.0)
  return (x * w).sum(axis=2, keepdims=True) / total.reshape((-1,) + (1,) * (x.ndim - 1))


class JointStrideAttention(nn.Module):
  """Self-attention inside strided local joint groups, each group joined by the cross token.

  ``z (B, T, 1 + P * J, C)`` -> same shape. The joints of each of the ``P`` persons are grouped
  separately (``person_groups``). The cross token attends within every group and its new value is
  the mean over groups, which is how it gathers pose context; joints see their group and the
  cross token. ``person_mask (B, P)`` (needed when ``P > 1``) marks the persons present in the
  clip: an absent person's joints are never attended to, and its groups are left out of the
  cross token's mean (in a clip with no person present, every group counts: the cross token then
  attends to itself alone). Sows the attention ``(B, T, Ng, heads, 1 + w, 1 + w)`` and the cross
  token's attention over joints as ``joint_importance (B, T, heads, P * J)``.

  ``plan`` (one row of ``joint_plans``, possibly a traced array when blocks are scanned) replaces
  the static group table of ``stride``: the same groups plus padding groups that change nothing.
  """
  num_heads: int
  window: int = 4
  stride: int = 1
  attn_dropout: float = 0.0
  proj_dropout: float = 0.0
  dtype: Dtype = jnp.float32
  plan: Any = None
  Attention = MultiHeadAttention

  @nn.compact
  def __call__(self, z, person_mask=None, *, deterministic: bool = True):
    persons = 1 if person_mask is None else person_mask.shape[1]
    n = z.shape[2] - 1
    if n % persons:
      raise ValueError(f"JointStrideAttention: {n} pose tokens are not {persons} persons' joints")
    j = n // persons
    if self.plan is None:
      idx = person_groups(j, min(self.window, j), self.stride, persons)  # (Ng, w), static
    else:
      idx = self.plan
      if idx.ndim != 2 or idx.shape[0] % persons or idx.shape[1] != min(self.window, j):
        raise ValueError(f"JointStrideAttention: plan {idx.shape} is not (persons * Ng, window) "
                         f"for {persons} persons and window {min(self.window, j)}")
    xp = np if isinstance(idx, np.ndarray) else jnp
    valid = xp.concatenate([xp.ones((idx.shape[0], 1), bool), idx >= 0], axis=1)
    mask, group_weights = valid[:, None, None, :], None
    # Padding groups of a plan hold no joint and stay out of the cross token's mean.
    real = None if xp is np else (idx >= 0).any(axis=1)                  # (Ng,)
    if persons > 1:
      present = person_mask[:, np.repeat(np.arange(persons), idx.shape[0] // persons)]  # (B, Ng)
      joints = jnp.broadcast_to(present[..., None], present.shape + (idx.shape[1],))
      keys = jnp.concatenate([jnp.ones_like(present[..., None]), joints], axis=-1)  # (B, Ng, 1+w)
      mask = (valid & keys)[:, None, :, None, None, :]
      # A clip with nobody in it: the cross token attends only to itself in every group, so all
      # its group outputs are equal; they all count, keeping the mean an affine combination.
      group_weights = present | ~present.any(axis=1, keepdims=True)
      if real is not None:
        group_weights = group_weights & real
    elif real is not None:
      group_weights = jnp.broadcast_to(real, (z.shape[0],) + real.shape)
    out, weights = self.attend(z, idx, mask, group_weights, persons, deterministic)
    # Importance of each joint for the cross token: its attention weight, per head, weighted as
    # the groups are in the cross token's mean.
    onehot = (idx[..., None] == xp.arange(n)).astype(np.float32)          # (Ng, w, P * J)
    cross_to_joint = weights[:, :, :, :, 0, 1:]                           # (B, T, Ng, heads, w)
    share = group_mean(jnp.einsum("btghw,gwj->btghj", cross_to_joint, onehot),
                       group_weights)[:, :, 0]                            # (B, T, heads, P * J)
    self.sow("intermediates", "joint_importance", share)
    return out

  def attend(self, z, idx, mask, group_weights, persons, deterministic):
    """Gathers the groups (each prefixed by the cross token), attends inside each, and returns
    ``(B, T, 1 + P * J, C)`` (cross token: ``group_mean`` of its outputs; joints: their group's
    output) and the weights."""
    b, t, _, c = z.shape
    ng, w = idx.shape
    groups = jnp.take(z[:, :, 1:], (np if isinstance(idx, np.ndarray) else jnp).maximum(idx, 0),
                      axis=2)                                              # (B, T, Ng, w, C)
    cross = jnp.broadcast_to(z[:, :, None, :1], (b, t, ng, 1, c))
    tokens = jnp.concatenate([cross, groups], axis=3)
    out, weights = self.Attention(self.num_heads, attn_dropout=self.attn_dropout,
                                  proj_dropout=self.proj_dropout, dtype=self.dtype,
                                  name="attn")(tokens, tokens, mask=mask,
                                               deterministic=deterministic)
    if not isinstance(idx, np.ndarray):  # a traced plan: read the joints back by a one-hot
      onehot = (idx[..., None] == jnp.arange(z.shape[2] - 1)).astype(out.dtype)
      joints = jnp.einsum("btgwc,gwn->btnc", out[:, :, :, 1:], onehot,
                          precision=jax.lax.Precision.HIGHEST)
      return jnp.concatenate([group_mean(out[:, :, :, 0], group_weights), joints],
                             axis=2), weights
    # Every joint is in exactly one group: read its output back from its (group, slot).
    slot = np.zeros(z.shape[2] - 1, np.int64)
    g_i, s_i = np.nonzero(idx >= 0)
    slot[idx[g_i, s_i]] = g_i * w + s_i
    joints = jnp.take(out[:, :, :, 1:].reshape(b, t, ng * w, c), slot, axis=2)
    return jnp.concatenate([group_mean(out[:, :, :, 0], group_weights), joints], axis=2), weights


class TemporalStrideAttention(nn.Module):
  """Self-attention over time inside non-overlapping windows of ``window`` frames, per token.

  ``z (B, T, N, C)`` -> same shape; windows are padded and masked when ``T % window != 0``.
  Sows the attention ``(B, N, T/window, heads, window, window)``.
  """
  num_heads: int
  window: int = 4
  attn_dropout: float = 0.0
  proj_dropout: float = 0.0
  dtype: Dtype = jnp.float32
  Attention = MultiHeadAttention

  @nn.compact
  def __call__(self, z, *, deterministic: bool = True):
    b, t, n, c = z.shape
    w = min(self.window, t)
    pad = (-t) % w
    x = z.transpose(0, 2, 1, 3)  # (B, N, T, C)
    if pad:
      x = jnp.pad(x, ((0, 0), (0, 0), (0, pad), (0, 0)))
    nw = (t + pad) // w
    x = x.reshape(b, n, nw, w, c)
    valid = (np.arange(t + pad) < t).reshape(nw, 1, 1, w)  # (nw, heads, q, k)
    out, _ = self.Attention(self.num_heads, attn_dropout=self.attn_dropout,
                            proj_dropout=self.proj_dropout, dtype=self.dtype,
                            name="attn")(x, x, mask=valid, deterministic=deterministic)
    out = out.reshape(b, n, t + pad, c)[:, :, :t]
    return out.transpose(0, 2, 1, 3)


class TemporalMerge(nn.Module):
  """Shrinks the temporal token count by ``stride``: concat ``stride`` frames -> LN -> Dense.

  ``z (B, T, N, C)`` -> ``(B, ceil(T/stride), N, C)``; the last frame is repeated when
  ``T % stride != 0`` (positions are merged alike by ``embeddings.temporal_pool``).
  """
  stride: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z):
    if self.stride == 1:
      return z
    b, t, n, c = z.shape
    z = pad_frames(z, self.stride)
    t2 = z.shape[1] // self.stride
    z = z.reshape(b, t2, self.stride, n, c).transpose(0, 1, 3, 2, 4).reshape(
        b, t2, n, self.stride * c)
    z = layer_norm("norm", self.dtype)(z)
    return nn.Dense(c, dtype=self.dtype, name="reduce")(z)
