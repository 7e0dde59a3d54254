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
    b, t, n, c = z.shape
    j = n - 1
    idx = joint_groups(j, min(self.window, j), self.stride)  # (Ng, w)
    ng, w = idx.shape
    safe = np.maximum(idx, 0)
    joints = z[:, :, 1:]
    grouped = jnp.take(joints, safe.reshape(-1), axis=2).reshape(b, t, ng, w, c)
    cross = jnp.broadcast_to(z[:, :, None, :1], (b, t, ng, 1, c))
    tokens = jnp.concatenate([cross, grouped], axis=3)  # (B, T, Ng, 1 + w, C)
    valid = np.concatenate([np.ones((ng, 1), bool), idx >= 0], axis=1)  # (Ng, 1 + w)
    mask = valid[:, None, None, :]  # (Ng, heads, q, k)
    out, weights = MultiHeadAttention(self.num_heads, attn_dropout=self.attn_dropout,
                                      proj_dropout=self.proj_dropout, dtype=self.dtype,
                                      name="attn")(tokens, tokens, mask=mask,
                                                   deterministic=deterministic)
    new_cross = out[:, :, :, 0].mean(axis=2, keepdims=True)  # (B, T, 1, C)
    # Scatter joint outputs back to joint order through a one-hot matrix (padding rows are 0).
    onehot = jnp.asarray(idx[..., None] == np.arange(j), out.dtype)  # (Ng, w, J)
    new_joints = jnp.einsum("btgwc,gwj->btjc", out[:, :, :, 1:], onehot)
    # Importance of each joint for the cross token: its attention weight, per head.
    cross_to_joint = weights[:, :, :, :, 0, 1:]  # (B, T, Ng, heads, w)
    importance = jnp.einsum("btghw,gwj->bthj", cross_to_joint, onehot.astype(jnp.float32)) / ng
    self.sow("intermediates", "joint_importance", importance)
    return jnp.concatenate([new_cross, new_joints], axis=2)


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
