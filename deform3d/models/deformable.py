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
import jax.numpy as jnp
import numpy as np

from deform3d.models.layers import MultiHeadAttention, layer_norm
from deform3d.ops import grid_sample_3d

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
  """
  strides: Sequence[int]
  groups: int = 1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    st, sh, sw = self.strides
    if x.shape[-1] % self.groups:
      raise ValueError(f"DepthwisePatchConv: {x.shape[-1]} channels are not divisible by "
                       f"groups={self.groups}")
    c = x.shape[-1] // self.groups
    k = st * sh * sw
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, c))
    bias = self.param("bias", nn.initializers.zeros, (c,))
    kernel = jnp.tile(kernel.astype(self.dtype), (1, self.groups))
    bias = jnp.tile(bias.astype(self.dtype), self.groups)
    pads = [(0, 0)] + [(0, (-n) % s) for n, s in zip(x.shape[1:4], (st, sh, sw))] + [(0, 0)]
    if any(p[1] for p in pads):
      x = jnp.pad(x, pads, mode="edge")
    # Sum of k strided views: one elementwise fusion, no patch transpose.
    out = bias
    for i, (a, b_, c_) in enumerate(np.ndindex(st, sh, sw)):
      out = out + x[:, a::st, b_::sh, c_::sw] * kernel[i]
    return out


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
               deterministic: bool = True):
    b, t, h, w, c = volume.shape
    g = self.num_groups
    if c % g or self.num_heads % g:
      raise ValueError(f"DeformableAttention3D: channels {c} and heads {self.num_heads} must be "
                       f"divisible by num_groups={g}")
    cg = c // g
    volume = layer_norm("volume_norm", self.dtype)(volume)

    # Offset network on the projected volume, per channel group. The depthwise conv's kernel is
    # shared by the groups (its weights are (k, C/G)), so it runs on all C channels at once
    # with the kernel tiled, and the groups are split only for the small (Ts, Hs, Ws) result.
    off_in = nn.Dense(c, dtype=self.dtype, name="offset_proj")(volume)
    off = DepthwisePatchConv(tuple(self.offset_strides), groups=g, dtype=self.dtype,
                             name="offset_dwconv")(off_in)                  # (B, Ts, Hs, Ws, C)
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

    grouped = volume.reshape(b, t, h, w, g, cg).transpose(0, 4, 1, 2, 3, 5).reshape(b * g, t, h, w, cg)
    sampled = grid_sample_3d(grouped, pos.astype(jnp.float32), align_corners=False)
    ns = grid_shape[0] * grid_shape[1] * grid_shape[2]
    sampled = sampled.reshape(b, g, ns, cg).transpose(0, 2, 1, 3).reshape(b, ns, c)
    points = pos.reshape(b, g, ns, 3)
    self.sow("intermediates", "sampling_points", points)

    # Continuous relative position bias: MLP(query position - sampling point) per head.
    # The first layer is linear, so W (q - p) + b = (W q + b) - W p: project the Q query and Ns
    # point positions separately and broadcast, instead of a matmul on (B, G, Q, Ns, 3).
    # The hidden units are laid out (B, G, hid, Q, Ns), so the second layer writes the
    # (B, heads, Q, Ns) bias without a transpose (measured faster on XLA:CPU, forward and
    # backward; docs/performance.md).
    fc1 = nn.Dense(self.rel_pos_hidden, dtype=jnp.float32, name="rpb_fc1")
    hq = fc1(query_pos.astype(jnp.float32))                       # (B, Q, hid), includes bias
    hp = fc1(points) - fc1.variables["params"]["bias"]            # (B, G, Ns, hid), no bias
    hidden = nn.relu(jnp.swapaxes(hq, 1, 2)[:, None, :, :, None]
                     - jnp.swapaxes(hp, 2, 3)[:, :, :, None, :]).astype(self.dtype)
    fc2 = nn.DenseGeneral(self.num_heads // g, axis=2, dtype=jnp.float32, name="rpb_fc2")
    bias = jnp.moveaxis(fc2(hidden), -1, 2)                       # (B, G, heads/G, Q, Ns)
    q_len = queries.shape[1]
    bias = bias.reshape(b, self.num_heads, q_len, ns)

    out, _ = MultiHeadAttention(self.num_heads, attn_dropout=self.attn_dropout,
                                proj_dropout=self.proj_dropout, dtype=self.dtype,
                                name="attn")(queries, sampled, bias=bias,
                                             pool_queries=pool_queries,
                                             deterministic=deterministic)
    return out
