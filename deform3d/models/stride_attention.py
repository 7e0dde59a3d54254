"""Local joint stride attention and temporal stride attention (Kim et al., Sec. 3.3-3.4).

Token layout everywhere: ``z (B, T, N, C)`` with ``N = 1 + J``; index 0 is the frame's
cross-modal token, indices 1..J the joint tokens.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
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


class JointStrideAttention(nn.Module):
  """Self-attention inside strided local joint groups, each group joined by the cross token.

  ``z (B, T, 1 + J, C)`` -> same shape. The cross token attends within every group and its new
  value is the mean over groups, which is how it gathers pose context; joints see their group and
  the cross token (which carries the RGB evidence from the deformable attention). Sows the
  cross token's attention over joints as ``joint_importance (B, T, heads, J)``.
  """
  num_heads: int
  window: int = 4
  stride: int = 1
  attn_dropout: float = 0.0
  proj_dropout: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z, *, deterministic: bool = True):
    j = z.shape[2] - 1
    layout = JointGroupLayout(j, min(self.window, j), self.stride)
    idx = layout.idx
    valid = np.concatenate([np.ones((layout.num_groups, 1), bool), idx >= 0], axis=1)
    mask = valid[:, None, None, :]  # (Ng, heads, q, k)
    out, weights = MultiHeadAttention(self.num_heads, attn_dropout=self.attn_dropout,
                                      proj_dropout=self.proj_dropout, dtype=self.dtype,
                                      name="attn")(z, z, mask=mask, layout=layout,
                                                   deterministic=deterministic)
    # Importance of each joint for the cross token: its attention weight, per head.
    onehot = np.asarray(idx[..., None] == np.arange(j), np.float32)  # (Ng, w, J)
    cross_to_joint = weights[:, :, :, :, 0, 1:]  # (B, T, Ng, heads, w)
    importance = jnp.einsum("btghw,gwj->bthj", cross_to_joint, onehot) / layout.num_groups
    self.sow("intermediates", "joint_importance", importance)
    return out


class JointGroupLayout:
  """Token layout of the joint stride attention, for ``MultiHeadAttention(layout=...)``.

  ``split``: ``(B, T, 1 + J, ...)`` -> ``(B, T, Ng, 1 + w, ...)``: each of the ``joint_groups``
  (``idx``, ``(Ng, w)``) preceded by the cross token; padding slots are zeros (masked as keys,
  dropped as queries). ``merge``: the inverse for outputs: joints back in joint order (every
  joint is in exactly one group), the cross token as the mean of its ``Ng`` outputs. Both are
  static pads, reshapes and transposes (no gather, and so no scatter in the backward pass).
  """

  def __init__(self, num_joints: int, window: int, stride: int):
    self.idx = joint_groups(num_joints, window, stride)
    self.num_joints, self.window, self.stride = num_joints, window, stride
    self.num_groups = self.idx.shape[0]
    self.block = window * stride
    self.padded = -(-num_joints // self.block) * self.block
    # split's pad/reshape/transpose must reproduce the index table (kept groups are a prefix).
    nb = self.padded // self.block
    table = np.arange(self.padded).reshape(nb, window, stride).swapaxes(1, 2)
    table = table.reshape(nb * stride, window)[:self.num_groups]
    assert np.array_equal(np.where(table < num_joints, table, -1), self.idx), (table, self.idx)

  def split(self, x):
    b, t, tail = x.shape[0], x.shape[1], x.shape[3:]
    nb, w, s, ng = self.padded // self.block, self.window, self.stride, self.num_groups
    joints = _pad_axis(x[:, :, 1:], 2, self.padded)
    joints = joints.reshape((b, t, nb, w, s) + tail)
    joints = jnp.swapaxes(joints, 3, 4).reshape((b, t, nb * s, w) + tail)[:, :, :ng]
    cross = jnp.broadcast_to(x[:, :, None, :1], (b, t, ng, 1) + tail)
    return jnp.concatenate([cross, joints], axis=3)

  def merge(self, y):
    b, t, tail = y.shape[0], y.shape[1], y.shape[4:]
    nb, w, s = self.padded // self.block, self.window, self.stride
    cross = y[:, :, :, 0].mean(axis=2, keepdims=True)
    joints = _pad_axis(y[:, :, :, 1:], 2, nb * s).reshape((b, t, nb, s, w) + tail)
    joints = jnp.swapaxes(joints, 3, 4).reshape((b, t, self.padded) + tail)
    return jnp.concatenate([cross, joints[:, :, :self.num_joints]], axis=2)


def _pad_axis(x, axis: int, size: int):
  """Zero-pads ``axis`` of ``x`` at the end to ``size``."""
  if x.shape[axis] == size:
    return x
  pads = [(0, 0)] * x.ndim
  pads[axis] = (0, size - x.shape[axis])
  return jnp.pad(x, pads)


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
    out, _ = MultiHeadAttention(self.num_heads, attn_dropout=self.attn_dropout,
                                proj_dropout=self.proj_dropout, dtype=self.dtype,
                                name="attn")(x, x, mask=valid, deterministic=deterministic)
    out = out.reshape(b, n, t + pad, c)[:, :, :t]
    return out.transpose(0, 2, 1, 3)


class TemporalMerge(nn.Module):
  """Shrinks the temporal token count by ``stride``: concat ``stride`` frames -> LN -> Dense.

  ``z (B, T, N, C)``, ``pos (B, T, N, 3)`` -> ``(B, ceil(T/stride), N, C)`` and the averaged
  positions. The last frame is repeated when ``T % stride != 0``.
  """
  stride: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, z, pos):
    if self.stride == 1:
      return z, pos
    b, t, n, c = z.shape
    z, pos = pad_frames(z, self.stride), pad_frames(pos, self.stride)
    t2 = z.shape[1] // self.stride
    z = z.reshape(b, t2, self.stride, n, c).transpose(0, 1, 3, 2, 4).reshape(b, t2, n, self.stride * c)
    z = layer_norm("norm", self.dtype)(z)
    z = nn.Dense(c, dtype=self.dtype, name="reduce")(z)
    pos = pos.reshape(b, t2, self.stride, n, 3).mean(axis=2)
    return z, pos
