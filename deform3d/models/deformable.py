"""3D deformable cross-attention from pose/cross queries into the RGB token volume.

A 3-D generalization of the deformable attention of DAT (Xia et al., CVPR 2022) used as the
cross-modal attention of Kim et al. (ICCV 2023, Sec. 3.2):

1. The RGB volume ``(B, T, H, W, C)`` is projected and split into ``G`` channel groups.
2. A light offset network (depthwise 3-D conv with kernel = stride = ``offset_strides``,
   LayerNorm, GELU, 1x1 projection to 3) predicts a 3-D offset for every point of a coarse reference grid
   ``(Ts, Hs, Ws)`` of each group; offsets are ``tanh``-bounded to ``offset_range_factor`` grid
   cells.
3. The volume is read at ``reference + offset`` by trilinear sampling (``grid_sample_3d``), giving
   ``Ns = Ts * Hs * Ws`` sampled tokens whose channel group ``g`` comes from group ``g``'s points.
4. Queries (cross-modal and joint tokens) attend over keys/values projected from the sampled
   tokens, with a continuous relative-position bias: an MLP of the 3-D displacement between each
   query's position (joint location ``(x, y)`` and frame time ``z``) and each sampling point.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from deform3d.models.embeddings import patchify
from deform3d.models.layers import MultiHeadAttention, layer_norm
from deform3d.ops import grid_sample_3d
from deform3d.ops.sampling import sample_weight_sum

Dtype = Any


def cell_centres(n: int):
  """Centres of ``n`` equal cells of ``[-1, 1]`` (the ``align_corners=False`` convention)."""
  return (jnp.arange(n, dtype=jnp.float32) + 0.5) / n * 2.0 - 1.0


def reference_grid(shape: Sequence[int]):
  """Cell centres of a ``(Ts, Hs, Ws)`` grid in normalized ``(x, y, z)`` coordinates."""
  ts, hs, ws = shape
  z, y, x = jnp.meshgrid(cell_centres(ts), cell_centres(hs), cell_centres(ws), indexing="ij")
  return jnp.stack([x, y, z], axis=-1)  # (Ts, Hs, Ws, 3)


class DepthwisePatchConv(nn.Module):
  """Depthwise 3-D convolution with kernel = stride: ``(N, T, H, W, C)`` -> ``(N, T/s, H/s, W/s, C)``.

  Sizes not divisible by the stride are padded by repeating the edge (output size rounds up).

  Written as a weighted sum of strided views, whose backward pass is cheap on every backend
  (XLA:CPU's depthwise strided conv3d backprop is not). With ``groups=G`` the input's ``C``
  channels are ``G`` groups that share one ``(k, C/G)`` kernel (the same as running the
  conv on a ``(N * G, ..., C/G)`` view of the input).

  ``pointwise=(w, b)`` (``w (C_in, C)``, ``b (C,)``) convolves ``x @ w + b`` instead of ``x``,
  without forming it: the 1x1 projection and the depthwise kernel are folded into one
  ``(k * C_in, C)`` matrix applied to the patches of ``x``. Same FLOPs as the projection alone,
  and the ``(N, T, H, W, C)`` projected tensor is never stored (docs/performance.md).
  """
  strides: Sequence[int]
  groups: int = 1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, pointwise=None):
    st, sh, sw = self.strides
    channels = x.shape[-1] if pointwise is None else pointwise[0].shape[-1]
    if channels % self.groups:
      raise ValueError(f"DepthwisePatchConv: {channels} channels are not divisible by "
                       f"groups={self.groups}")
    c = channels // self.groups
    k = st * sh * sw
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, c))
    bias = self.param("bias", nn.initializers.zeros, (c,))
    kernel = jnp.tile(kernel.astype(self.dtype), (1, self.groups))
    bias = jnp.tile(bias.astype(self.dtype), self.groups)
    pads = [(0, 0)] + [(0, (-n) % s) for n, s in zip(x.shape[1:4], (st, sh, sw))] + [(0, 0)]
    if any(p[1] for p in pads):
      x = jnp.pad(x, pads, mode="edge")
    if pointwise is not None:
      w, b = (p.astype(self.dtype) for p in pointwise)
      fused = (kernel[:, None, :] * w[None]).reshape(k * w.shape[0], channels)
      return patchify(x, st, sh, sw) @ fused + (b * kernel.sum(0) + bias)
    # Sum of k strided views: one elementwise fusion, no patch transpose.
    out = bias
    for i, (a, b_, c_) in enumerate(np.ndindex(st, sh, sw)):
      out = out + x[:, a::st, b_::sh, c_::sw] * kernel[i]
    return out


def standardize(x, dtype=jnp.float32, epsilon: float = 1e-6):
  """LayerNorm without scale and bias over the last axis, in ``dtype``: the same statistics
  (float32 or wider, variance as E[x^2] - E[x]^2) and epsilon as ``layer_norm``."""
  x = x.astype(jnp.promote_types(jnp.float32, x.dtype))
  mean = x.mean(axis=-1, keepdims=True)
  var = jnp.maximum(jnp.square(x).mean(axis=-1, keepdims=True) - jnp.square(mean), 0.0)
  return ((x - mean) * jax.lax.rsqrt(var + epsilon)).astype(dtype)


class _LayerNormParams(nn.Module):
  """The parameters of ``nn.LayerNorm`` over ``features`` (same names and initializers)."""
  features: int

  @nn.compact
  def __call__(self):
    return (self.param("scale", nn.initializers.ones, (self.features,)),
            self.param("bias", nn.initializers.zeros, (self.features,)))


class _DenseParams(nn.Module):
  """The parameters of ``nn.Dense(features)`` on ``in_features`` inputs (same names, shapes and
  initializers), for a layer whose product is written out by hand."""
  in_features: int
  features: int

  @nn.compact
  def __call__(self):
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (self.in_features, self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    return kernel, bias


class DeformableAttention3D(nn.Module):
  """Cross-attention of ``queries (B, Q, C)`` over deformably sampled RGB tokens.

  Args of ``__call__``: ``queries (B, Q, C)``, ``query_pos (B, Q, 3)`` normalized ``(x, y, z)``,
  ``volume (B, T, H, W, C)``. Returns ``(B, Q, C)``, or with ``pool_queries=p`` the mean over
  every ``p`` consecutive queries ``(B, Q / p, C)`` (computed exactly and cheaper, see
  ``MultiHeadAttention``). Sows ``sampling_points (B, G, Ns, 3)`` and
  the attention weights ``(B, heads, Q, Ns)``.
  """
  num_heads: int
  num_groups: int = 1
  offset_strides: Sequence[int] = (2, 2, 2)
  offset_range_factor: float = 2.0
  rel_pos_hidden: int = 8
  attn_dropout: float = 0.0
  proj_dropout: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, queries, query_pos, volume, *, pool_queries: int = 1,
               standardized: bool = False, deterministic: bool = True):
    b, t, h, w, c = volume.shape
    g = self.num_groups
    if c % g or self.num_heads % g:
      raise ValueError(f"DeformableAttention3D: channels {c} and heads {self.num_heads} must be "
                       f"divisible by num_groups={g}")
    cg = c // g
    # volume_norm is a LayerNorm, LN(v) = v_hat * scale + bias with v_hat the standardized
    # volume. It is applied without storing LN(v): folded into the offset projection's weights,
    # and applied to the few sampled tokens (sampling is linear). Every block reads the same
    # RGB volume, so the model standardizes it once and passes standardized=True.
    v_hat = volume if standardized else standardize(volume, self.dtype)
    scale, shift = _LayerNormParams(c, name="volume_norm")()

    # Offset network on the projected volume, per channel group. The depthwise conv's kernel is
    # shared by the groups (its weights are (k, C/G)), so it runs on all C channels at once
    # with the kernel tiled, and the groups are split only for the small (Ts, Hs, Ws) result.
    # Dense(LN(v)) = v_hat @ (scale * W) + (bias @ W + b), fused into the depthwise conv.
    w_proj, b_proj = _DenseParams(c, c, name="offset_proj")()
    off = DepthwisePatchConv(tuple(self.offset_strides), groups=g, dtype=self.dtype,
                             name="offset_dwconv")(
                                 v_hat, pointwise=(scale[:, None] * w_proj,
                                                   shift @ w_proj + b_proj))  # (B, Ts, Hs, Ws, C)
    off = off.reshape(off.shape[:4] + (g, cg))
    off = nn.gelu(layer_norm("offset_norm", self.dtype)(off))
    off = nn.Dense(3, use_bias=False, dtype=jnp.float32, kernel_init=nn.initializers.zeros,
                   name="offset_out")(off)                                   # (B, Ts, Hs, Ws, G, 3)
    off = jnp.moveaxis(off, 4, 1).reshape((b * g,) + off.shape[1:4] + (3,))
    grid_shape = off.shape[1:4]  # (Ts, Hs, Ws)
    cells = jnp.asarray([grid_shape[2], grid_shape[1], grid_shape[0]], jnp.float32)  # x, y, z
    offset_range = self.offset_range_factor * 2.0 / cells
    pos = reference_grid(grid_shape)[None] + jnp.tanh(off) * offset_range
    pos = jnp.clip(pos, -1.0, 1.0)  # (B*G, Ts, Hs, Ws, 3)

    # Samples of LN(v) = samples of v_hat * scale + bias * (sum of the trilinear weights), the
    # weight sum being below 1 where corners fall outside the volume (zero padding).
    grouped = v_hat.reshape(b, t, h, w, g, cg).transpose(0, 4, 1, 2, 3, 5).reshape(b * g, t, h, w, cg)
    grid = pos.astype(jnp.float32)
    sampled = grid_sample_3d(grouped, grid, align_corners=False)           # (B*G, Ts, Hs, Ws, Cg)
    wsum = sample_weight_sum(grouped.shape, grid, align_corners=False)     # (B*G, Ts, Hs, Ws)
    ns = grid_shape[0] * grid_shape[1] * grid_shape[2]
    sampled = sampled.reshape(b, g, ns, cg).transpose(0, 2, 1, 3).reshape(b, ns, c)
    wsum = jnp.repeat(wsum.reshape(b, g, ns).transpose(0, 2, 1), cg, axis=2)  # (B, Ns, C)
    sampled = (sampled * scale.astype(sampled.dtype)
               + wsum.astype(sampled.dtype) * shift.astype(sampled.dtype))
    points = pos.reshape(b, g, ns, 3)
    self.sow("intermediates", "sampling_points", points)

    # Continuous relative position bias: MLP(query position - sampling point) per head.
    # The first layer is linear, so W (q - p) + b = (W q + b) - W p: project the Q query and Ns
    # point positions separately and broadcast, instead of a matmul on (B, G, Q, Ns, 3).
    # The second layer (hid -> heads/G) is written as a sum over the hidden units, so XLA fuses
    # the ReLU and the products into one loop and the (B, G, Q, Ns, hid) hidden tensor is never
    # stored, in the forward or the backward pass (docs/performance.md).
    fc1 = nn.Dense(self.rel_pos_hidden, dtype=jnp.float32, name="rpb_fc1")
    hq = fc1(query_pos.astype(jnp.float32))                       # (B, Q, hid), includes bias
    hp = fc1(points) - fc1.variables["params"]["bias"]            # (B, G, Ns, hid), no bias
    w2, b2 = _DenseParams(self.rel_pos_hidden, self.num_heads // g, name="rpb_fc2")()
    bias = [b2[i] for i in range(self.num_heads // g)]
    for k in range(self.rel_pos_hidden):
      hidden = nn.relu(hq[:, None, :, None, k] - hp[:, :, None, :, k])   # (B, G, Q, Ns)
      bias = [acc + w2[k, i] * hidden for i, acc in enumerate(bias)]
    bias = jnp.stack(bias, axis=2)                                # (B, G, heads/G, Q, Ns)
    q_len = queries.shape[1]
    bias = bias.reshape(b, self.num_heads, q_len, ns)

    out, _ = MultiHeadAttention(self.num_heads, attn_dropout=self.attn_dropout,
                                proj_dropout=self.proj_dropout, dtype=self.dtype,
                                name="attn")(queries, sampled, bias=bias,
                                             pool_queries=pool_queries,
                                             deterministic=deterministic)
    return out
