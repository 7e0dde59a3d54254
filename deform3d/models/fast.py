"""Speed rewrites of the plain modules, in one place: ``Deform3DTransformer(fast=True)``.

Every class here subclasses a plain module and overrides how it computes, never what: the same
parameter names, shapes and initializers (a checkpoint of one loads into the other) and the same
function of them. ``tests/test_fast_paths.py`` checks values and gradients against the plain
model for every config in ``configs/`` and each rewrite against the form it replaces.
docs/performance.md has the measurements behind each one.

* ``FastMultiHeadAttention``: small attention matmuls with heads first and custom VJPs that
  avoid XLA:CPU's slow row-contracted dot (``ops.batched_matmul``); ``pool_queries`` averages
  the weights of ``p`` consecutive queries before the value product (exact, both are linear);
  ``layout`` regroups projected tokens so that the projections run once per token.
* ``FastJointStrideAttention``: joint groups by static pad/reshape/transpose
  (``JointGroupLayout``) instead of a gather and its scatter-add backward.
* ``FastDeformableAttention3D``: the offset projection folded into the depthwise offset conv
  (one ``(k * C, C)`` matmul on patches; the projected volume is never stored); the
  relative-position MLP's second layer written as a sum over its hidden units, so the
  ``(B, G, Q, Nk, hidden)`` tensor is never stored; pooled queries inside the attention.
* ``FusedDeformableAttention3D`` (``attention_kernel="pallas"``): the position bias, logits and
  softmax inside one Pallas kernel (``ops/fused_attention.py``), so no ``(B, heads, Q, Nk)``
  array is stored in the forward or the backward pass. It sows no attention weights
  (``attention_maps`` runs the XLA form).
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from deform3d.models.deformable import DeformableAttention3D, edge_pad
from deform3d.models.embeddings import patchify
from deform3d.models.layers import MultiHeadAttention, layer_norm
from deform3d.models.blocks import Block, PooledBlock
from deform3d.models.stride_attention import (JointStrideAttention, TemporalStrideAttention,
                                              group_mean, joint_groups)
from deform3d.ops.batched_matmul import matmul_nn, matmul_nt
from deform3d.ops.fused_attention import deformable_attention

Dtype = Any


class FastMultiHeadAttention(MultiHeadAttention):
  """``MultiHeadAttention`` with heads-first custom-VJP matmuls, plus two options:

  ``pool_queries=p`` returns the mean of the outputs of every ``p`` consecutive queries,
  ``(..., Lq / p, C)``, by averaging the (dropped-out) weights before the value product and the
  output projection.

  ``layout`` (an object with ``split`` and ``merge``) regroups the tokens after the input
  projections: ``split`` maps projected ``(..., L, H, D)`` queries, keys and values to the
  ``(..., L', H, D)`` sequences that attend to each other, and ``merge`` maps the per-sequence
  outputs back to ``(..., L, H, D)`` before the output projection. Both must be linear.
  ``bias``, ``mask`` and the returned weights are then in the split shape.
  """

  @nn.compact
  def __call__(self, x_q, x_kv, *, bias=None, mask=None, pool_queries: int = 1, layout=None,
               deterministic: bool = True):
    q, k, v = self.project(x_q, x_kv)                                      # (..., L, H, D)
    if layout is not None:
      q, k, v = layout.split(q), layout.split(k), layout.split(v)
    lead = jnp.broadcast_shapes(q.shape[:-3], k.shape[:-3])
    lq, lk, h, head_dim = q.shape[-3], k.shape[-3], q.shape[-2], q.shape[-1]

    def heads_first(x, length):
      """``(..., L, H, D)`` -> ``(prod(lead) * H, L, D)``: one batch axis, heads before the
      sequence; XLA:CPU runs these small batched matmuls several times faster than the
      many-batch-axis einsum (docs/performance.md)."""
      x = jnp.broadcast_to(x, lead + x.shape[-3:])
      return jnp.moveaxis(x, -2, -3).reshape(-1, length, head_dim)

    q, k, v = heads_first(q, lq), heads_first(k, lk), heads_first(v, lk)
    logits = (matmul_nt(q, k) * (head_dim ** -0.5)).reshape(lead + (h, lq, lk))
    weights = self.softmax(logits, bias, mask)
    dropped = nn.Dropout(self.attn_dropout)(weights, deterministic=deterministic)
    if pool_queries > 1:
      if lq % pool_queries:
        raise ValueError(f"MultiHeadAttention: {lq} queries are not divisible by "
                         f"pool_queries={pool_queries}")
      lq //= pool_queries
      dropped = dropped.reshape(lead + (h, lq, pool_queries, lk)).mean(axis=-2)
    out = matmul_nn(dropped.astype(self.dtype).reshape(-1, lq, lk), v)
    out = jnp.moveaxis(out.reshape(lead + (h, lq, head_dim)), -3, -2)      # (..., Lq, H, D)
    if layout is not None:
      out = layout.merge(out)
    return self.output(out, deterministic), weights


class _DenseParams(nn.Module):
  """The parameters of ``nn.Dense(features)`` on ``in_features`` inputs (same names, shapes and
  initializers), for a layer whose product is written out by hand."""
  in_features: int
  features: int

  @nn.compact
  def __call__(self):
    return (self.param("kernel", nn.initializers.lecun_normal(), (self.in_features, self.features)),
            self.param("bias", nn.initializers.zeros, (self.features,)))


class DepthwisePatchConv(nn.Module):
  """``nn.Conv`` depthwise (kernel = stride, VALID after edge padding) on ``x @ w + b``, applied
  to the ``groups`` channel groups of ``(N, T, H, W, groups * c)`` with one shared kernel.

  The parameters are those of ``nn.Conv(c, kernel_size=strides, strides=strides,
  feature_group_count=c)`` (``kernel (kt, kh, kw, 1, c)``, ``bias (c,)``). The 1x1 projection
  ``pointwise = (w, b)`` and the depthwise kernel are folded into one ``(k * C_in, C)`` matrix
  applied to the patches of ``x``: the ``(N, T, H, W, C)`` projected tensor is never stored, and
  the backward pass is a matmul (XLA:CPU's depthwise strided conv3d backprop is slow).
  """
  strides: Sequence[int]
  groups: int = 1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, pointwise):
    st, sh, sw = self.strides
    w, b = (p.astype(self.dtype) for p in pointwise)
    channels = w.shape[-1]
    c = channels // self.groups
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (st, sh, sw, 1, c))
    bias = self.param("bias", nn.initializers.zeros, (c,))
    k = st * sh * sw
    kernel = jnp.tile(kernel.astype(self.dtype).reshape(k, c), (1, self.groups))  # (k, C)
    bias = jnp.tile(bias.astype(self.dtype), self.groups)
    fused = (kernel[:, None, :] * w[None]).reshape(k * w.shape[0], channels)
    x = edge_pad(x.astype(self.dtype), self.strides)
    return patchify(x, st, sh, sw) @ fused + (b * kernel.sum(0) + bias)


class FastDeformableAttention3D(DeformableAttention3D):
  Attention = FastMultiHeadAttention

  def offsets(self, volume):
    c = volume.shape[-1]
    g, cg = self.num_groups, c // self.num_groups
    w, b = _DenseParams(c, c, name="offset_proj")()
    off = DepthwisePatchConv(tuple(self.offset_strides), groups=g, dtype=self.dtype,
                             name="offset_dwconv")(volume, (w, b))          # (B, Ts, Hs, Ws, C)
    off = off.reshape(off.shape[:4] + (g, cg))
    off = nn.gelu(layer_norm("offset_norm", self.dtype)(off))
    off = nn.Dense(3, use_bias=False, dtype=jnp.float32, kernel_init=nn.initializers.zeros,
                   name="offset_out")(off)                                  # (B, Ts, Hs, Ws, G, 3)
    return jnp.moveaxis(off, 4, 1)

  def rel_pos_bias(self, query_pos, key_pos):
    # First layer: W (q - p) + b = (W q + b) - W p, projected separately and broadcast. Second
    # layer: a sum over the hidden units, which XLA fuses with the ReLU into one loop.
    b, g, nk, _ = key_pos.shape
    heads_g = self.num_heads // g
    w1, b1 = _DenseParams(3, self.rel_pos_hidden, name="rpb_fc1")()
    w2, b2 = _DenseParams(self.rel_pos_hidden, heads_g, name="rpb_fc2")()
    hq = query_pos @ w1 + b1                                               # (B, Q, hid)
    hk = key_pos @ w1                                                      # (B, G, Nk, hid)
    bias = [b2[i] for i in range(heads_g)]
    for k in range(self.rel_pos_hidden):
      hidden = nn.relu(hq[:, None, :, None, k] - hk[:, :, None, :, k])    # (B, G, Q, Nk)
      bias = [acc + w2[k, i] * hidden for i, acc in enumerate(bias)]
    return jnp.stack(bias, axis=2).reshape(b, self.num_heads, query_pos.shape[1], nk)

  def attend(self, queries, keys, bias, pool_queries: int, deterministic: bool):
    out, _ = self.Attention(self.num_heads, attn_dropout=self.attn_dropout,
                            proj_dropout=self.proj_dropout, dtype=self.dtype,
                            name="attn")(queries, keys, bias=bias, pool_queries=pool_queries,
                                         deterministic=deterministic)
    return out


class FusedMultiHeadAttention(MultiHeadAttention):
  """``MultiHeadAttention`` (same parameters) whose additive bias is the deformable attention's
  position MLP, computed inside the kernel of ``ops.fused_attention`` from ``query_hidden (B, Q,
  hidden)``, ``key_hidden (B, G, Nk, hidden)`` and the per-head second-layer weight ``w2
  (hidden, heads)``. Returns ``(output, None)``: the weights are never materialized."""

  implementation = "pallas"  # ops.fused_attention: the kernel everywhere, or "auto"

  @nn.compact
  def __call__(self, x_q, x_kv, *, query_hidden, key_hidden, w2, pool_queries: int = 1,
               deterministic: bool = True):
    if self.attn_dropout and not deterministic:
      raise ValueError("attention_kernel='pallas' has no attention dropout: set "
                       f"attn_dropout=0 (got {self.attn_dropout}) or attention_kernel='xla'")
    q, k, v = (jnp.swapaxes(x, 1, 2) for x in self.project(x_q, x_kv))   # (B, H, L, D)
    out = jnp.swapaxes(deformable_attention(q, k, v, query_hidden, key_hidden, w2,
                                            implementation=self.implementation), 1, 2)
    if pool_queries > 1:
      b, lq = out.shape[:2]
      if lq % pool_queries:
        raise ValueError(f"MultiHeadAttention: {lq} queries are not divisible by "
                         f"pool_queries={pool_queries}")
      out = out.astype(jnp.float32).reshape((b, lq // pool_queries, pool_queries) + out.shape[2:])
      out = out.mean(axis=2).astype(self.dtype)
    return self.output(out, deterministic), None


class FusedDeformableAttention3D(FastDeformableAttention3D):
  """``FastDeformableAttention3D`` whose bias and attention run in one fused kernel."""
  Attention = FusedMultiHeadAttention

  def attend_keys(self, queries, query_pos, keys, key_pos, pool_queries: int,
                  deterministic: bool):
    g = key_pos.shape[1]
    w1, b1 = _DenseParams(3, self.rel_pos_hidden, name="rpb_fc1")()
    # rpb_fc2's bias adds one number to every key of a query's row: the softmax cancels it.
    w2, _ = _DenseParams(self.rel_pos_hidden, self.num_heads // g, name="rpb_fc2")()
    out, _ = self.Attention(
        self.num_heads, attn_dropout=self.attn_dropout, proj_dropout=self.proj_dropout,
        dtype=self.dtype, name="attn")(
            queries, keys, query_hidden=query_pos @ w1 + b1, key_hidden=key_pos @ w1,
            w2=jnp.tile(w2, (1, g)), pool_queries=pool_queries, deterministic=deterministic)
    return out


class AutoMultiHeadAttention(FusedMultiHeadAttention):
  implementation = "auto"  # the kernel on GPU and TPU, its XLA form on CPU


class AutoDeformableAttention3D(FusedDeformableAttention3D):
  """``FusedDeformableAttention3D`` whose op chooses per platform (``attention_kernel="auto"``)."""
  Attention = AutoMultiHeadAttention


class JointGroupLayout:
  """Token layout of the joint stride attention, for ``FastMultiHeadAttention(layout=...)``.

  ``split``: ``(B, T, 1 + P * J, ...)`` -> ``(B, T, P * Ng, 1 + w, ...)``: each of the
  ``person_groups`` (``P`` persons' ``joint_groups``, person by person) preceded by the cross
  token; padding slots are zeros (masked as keys, dropped as queries). ``merge``: the inverse for
  outputs: joints back in joint order (every joint is in exactly one group), the cross token as
  ``group_mean`` of its outputs (weighted by ``group_weights (B, P * Ng)`` when given). Both are
  static pads, reshapes and transposes (no gather, and so no scatter in the backward pass); the
  persons ride along the time axis.
  """

  def __init__(self, num_joints: int, window: int, stride: int, persons: int = 1,
               group_weights=None):
    self.idx = joint_groups(num_joints, window, stride)
    self.num_joints, self.window, self.stride = num_joints, window, stride
    self.persons, self.group_weights = persons, group_weights
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
    p, j = self.persons, self.num_joints
    joints = _pad_axis(x[:, :, 1:].reshape((b, t * p, j) + tail), 2, self.padded)
    joints = joints.reshape((b, t * p, nb, w, s) + tail)
    joints = jnp.swapaxes(joints, 3, 4).reshape((b, t * p, nb * s, w) + tail)[:, :, :ng]
    joints = joints.reshape((b, t, p * ng, w) + tail)
    cross = jnp.broadcast_to(x[:, :, None, :1], (b, t, p * ng, 1) + tail)
    return jnp.concatenate([cross, joints], axis=3)

  def merge(self, y):
    b, t, tail = y.shape[0], y.shape[1], y.shape[4:]
    nb, w, s = self.padded // self.block, self.window, self.stride
    p, j = self.persons, self.num_joints
    cross = group_mean(y[:, :, :, 0], self.group_weights)
    joints = y[:, :, :, 1:].reshape((b, t * p, self.num_groups, w) + tail)
    joints = _pad_axis(joints, 2, nb * s).reshape((b, t * p, nb, s, w) + tail)
    joints = jnp.swapaxes(joints, 3, 4).reshape((b, t * p, self.padded) + tail)
    joints = joints[:, :, :j].reshape((b, t, p * j) + tail)
    return jnp.concatenate([cross, joints], axis=2)


def _pad_axis(x, axis: int, size: int):
  """Zero-pads ``axis`` of ``x`` at the end to ``size``."""
  if x.shape[axis] == size:
    return x
  pads = [(0, 0)] * x.ndim
  pads[axis] = (0, size - x.shape[axis])
  return jnp.pad(x, pads)


class PlanGroupLayout:
  """``JointGroupLayout`` for a group table known only as data (a scanned block's ``plan``,
  ``(Ng, w)`` with ``-1`` padding): ``split`` and ``merge`` are products with the table's one-hot
  ``(Ng, w, P * J)`` (exact: each output is one input times 1), so the backward pass is a matmul
  too, not a scatter."""

  def __init__(self, idx, num_tokens: int, group_weights=None):
    self.onehot = idx[..., None] == jnp.arange(num_tokens)
    self.group_weights = group_weights

  def split(self, x):
    joints = jnp.einsum("btn...,gwn->btgw...", x[:, :, 1:], self.onehot.astype(x.dtype),
                        precision=jax.lax.Precision.HIGHEST)
    cross = jnp.broadcast_to(x[:, :, None, :1], joints.shape[:3] + (1,) + joints.shape[4:])
    return jnp.concatenate([cross, joints], axis=3)

  def merge(self, y):
    cross = group_mean(y[:, :, :, 0], self.group_weights)
    joints = jnp.einsum("btgw...,gwn->btn...", y[:, :, :, 1:], self.onehot.astype(y.dtype),
                        precision=jax.lax.Precision.HIGHEST)
    return jnp.concatenate([cross, joints], axis=2)


class FastJointStrideAttention(JointStrideAttention):
  Attention = FastMultiHeadAttention

  def attend(self, z, idx, mask, group_weights, persons, deterministic):
    if isinstance(idx, np.ndarray):
      layout = JointGroupLayout((z.shape[2] - 1) // persons, idx.shape[1], self.stride, persons,
                                group_weights)
    else:
      layout = PlanGroupLayout(idx, z.shape[2] - 1, group_weights)
    return self.Attention(self.num_heads, attn_dropout=self.attn_dropout,
                          proj_dropout=self.proj_dropout, dtype=self.dtype,
                          name="attn")(z, z, mask=mask, layout=layout, deterministic=deterministic)


class FastTemporalStrideAttention(TemporalStrideAttention):
  Attention = FastMultiHeadAttention


class FastBlock(Block):
  Deformable = FastDeformableAttention3D
  JointAttention = FastJointStrideAttention
  TemporalAttention = FastTemporalStrideAttention


class FastPooledBlock(PooledBlock):
  Deformable = FastDeformableAttention3D
  JointAttention = FastJointStrideAttention
  TemporalAttention = FastTemporalStrideAttention


class FusedBlock(FastBlock):
  Deformable = FusedDeformableAttention3D


class FusedPooledBlock(FastPooledBlock):
  Deformable = FusedDeformableAttention3D


class AutoBlock(FastBlock):
  Deformable = AutoDeformableAttention3D


class AutoPooledBlock(FastPooledBlock):
  Deformable = AutoDeformableAttention3D
