"""3D deformable attention (Kim et al., ICCV 2023: 3D token search + attention), plain form.

A 3-D generalization of the deformable attention of DAT (Xia et al., CVPR 2022):

1. The (normalized) RGB tokens ``(B, T, H, W, C)`` are projected and split into ``G`` channel
   groups. A light offset network (depthwise 3-D conv with kernel = stride = ``offset_strides``,
   LayerNorm, GELU, projection to 3, shared by the groups) predicts a 3-D offset ``(dx, dy, dt)``
   for every point of a coarse reference grid ``(Ts, Hs, Ws)``; offsets are ``tanh``-bounded to
   ``offset_range_factor`` grid cells. This is the 3D token search.
2. The RGB tokens are read at ``reference + offset`` by trilinear sampling (``grid_sample_3d``,
   torch ``grid_sample`` semantics), giving ``Ns = Ts * Hs * Ws`` sampled tokens whose channel
   group ``g`` comes from group ``g``'s points.
3. Multi-head attention: the queries attend over keys/values made from the sampled tokens
   concatenated with the ``context`` tokens (the cross-modal tokens in the paper's block), with a
   continuous relative-position bias ``MLP(query position - key position)`` per head.

The speed rewrites of ``offsets``, ``rel_pos_bias`` and ``attend`` are in ``fast.py``.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from deform3d.models.layers import MultiHeadAttention, layer_norm
from deform3d.ops import grid_sample_3d

Dtype = Any


def cell_centres(n: int):
  """Centres of ``n`` equal cells of ``[-1, 1]`` (the ``align_corners=False`` convention)."""
  return (jnp.arange(n, dtype=jnp.float32) + 0.5) / n * 2.0 - 1.0


def reference_grid(shape: Sequence[int]):
  """Cell centres of a ``(T, H, W)`` grid in normalized ``(x, y, t)`` coordinates ``(T, H, W, 3)``."""
  ts, hs, ws = shape
  z, y, x = jnp.meshgrid(cell_centres(ts), cell_centres(hs), cell_centres(ws), indexing="ij")
  return jnp.stack([x, y, z], axis=-1)


def edge_pad(x, strides: Sequence[int]):
  """Pads axes 1..3 of ``(N, T, H, W, C)`` at the end to multiples of ``strides`` by repeating
  the edge."""
  pads = [(0, 0)] + [(0, (-n) % s) for n, s in zip(x.shape[1:4], strides)] + [(0, 0)]
  return jnp.pad(x, pads, mode="edge") if any(p[1] for p in pads) else x


class DeformableAttention3D(nn.Module):
  """Attention of ``queries (B, Q, C)`` over deformably sampled RGB tokens (+ context tokens).

  ``__call__(queries, query_pos, volume, context=None, context_pos=None, pool_queries=1)``:
  ``query_pos (B, Q, 3)`` normalized ``(x, y, t)``; ``volume (B, T, H, W, C)`` the normalized
  RGB tokens that are searched and sampled; ``context (B, M, C)`` with ``context_pos (B, M, 3)``
  extra keys/values. Returns ``(B, Q, C)``, or with ``pool_queries=p`` the mean over every ``p``
  consecutive queries' outputs ``(B, Q / p, C)``. Sows ``sampling_points (B, G, Ns, 3)`` and the
  attention weights ``(B, heads, Q, Ns + M)`` (sampled keys first).
  """
  num_heads: int
  num_groups: int = 1
  offset_strides: Sequence[int] = (2, 2, 2)
  offset_range_factor: float = 2.0
  rel_pos_hidden: int = 8
  attn_dropout: float = 0.0
  proj_dropout: float = 0.0
  sampler_backward: str = "auto"  # grid_sample_3d's ``backward`` (ops/sampling.py)
  dtype: Dtype = jnp.float32
  Attention = MultiHeadAttention

  @nn.compact
  def __call__(self, queries, query_pos, volume, context=None, context_pos=None, *,
               pool_queries: int = 1, deterministic: bool = True):
    b, t, h, w, c = volume.shape
    g = self.num_groups
    if c % g or self.num_heads % g:
      raise ValueError(f"DeformableAttention3D: channels {c} and heads {self.num_heads} must be "
                       f"divisible by num_groups={g}")
    cg = c // g
    # 3D token search: bounded offsets around the reference grid, per channel group.
    off = self.offsets(volume)                                             # (B, G, Ts, Hs, Ws, 3)
    grid_shape = off.shape[2:5]
    cells = jnp.asarray([grid_shape[2], grid_shape[1], grid_shape[0]], jnp.float32)  # x, y, t
    points = reference_grid(grid_shape) + jnp.tanh(off) * (self.offset_range_factor * 2.0 / cells)
    points = jnp.clip(points, -1.0, 1.0)
    ns = grid_shape[0] * grid_shape[1] * grid_shape[2]
    grouped = volume.reshape(b, t, h, w, g, cg).transpose(0, 4, 1, 2, 3, 5)
    sampled = grid_sample_3d(grouped.reshape(b * g, t, h, w, cg),
                             points.reshape(b * g, ns, 3), align_corners=False,
                             backward=self.sampler_backward)                # (B*G, Ns, Cg)
    sampled = sampled.reshape(b, g, ns, cg).transpose(0, 2, 1, 3).reshape(b, ns, c)
    points = points.reshape(b, g, ns, 3)
    self.sow("intermediates", "sampling_points", points)

    keys, key_pos = sampled, points                                        # key_pos (B, G, Nk, 3)
    if context is not None:
      keys = jnp.concatenate([sampled, context.astype(sampled.dtype)], axis=1)
      ctx = jnp.broadcast_to(context_pos[:, None].astype(jnp.float32),
                             (b, g) + context_pos.shape[1:])
      key_pos = jnp.concatenate([points, ctx], axis=2)
    return self.attend_keys(queries, query_pos.astype(jnp.float32), keys, key_pos,
                            pool_queries, deterministic)

  def attend_keys(self, queries, query_pos, keys, key_pos, pool_queries: int,
                  deterministic: bool):
    """The position bias ``(B, heads, Q, Nk)`` and the attention over ``keys`` (``fast.py``'s
    fused form computes the bias inside its kernel instead)."""
    bias = self.rel_pos_bias(query_pos, key_pos)
    return self.attend(queries, keys, bias, pool_queries, deterministic)

  def offsets(self, volume):
    """Offset network: ``(B, T, H, W, C)`` -> raw offsets ``(B, G, Ts, Hs, Ws, 3)``."""
    b, t, h, w, c = volume.shape
    g, cg = self.num_groups, c // self.num_groups
    x = nn.Dense(c, dtype=self.dtype, name="offset_proj")(volume)
    x = x.reshape(b, t, h, w, g, cg).transpose(0, 4, 1, 2, 3, 5).reshape(b * g, t, h, w, cg)
    strides = tuple(self.offset_strides)
    x = nn.Conv(cg, kernel_size=strides, strides=strides, padding="VALID",
                feature_group_count=cg, dtype=self.dtype, name="offset_dwconv")(
                    edge_pad(x, strides))
    x = nn.gelu(layer_norm("offset_norm", self.dtype)(x))
    off = nn.Dense(3, use_bias=False, dtype=jnp.float32, kernel_init=nn.initializers.zeros,
                   name="offset_out")(x)
    return off.reshape((b, g) + off.shape[1:])

  def rel_pos_bias(self, query_pos, key_pos):
    """``MLP(query_pos - key_pos)`` (hidden ``rel_pos_hidden``, ReLU) per head: ``query_pos
    (B, Q, 3)``, ``key_pos (B, G, Nk, 3)`` -> ``(B, heads, Q, Nk)``; group ``g``'s heads use
    group ``g``'s points."""
    b, g, nk, _ = key_pos.shape
    rel = query_pos[:, None, :, None, :] - key_pos[:, :, None, :, :]       # (B, G, Q, Nk, 3)
    hidden = nn.relu(nn.Dense(self.rel_pos_hidden, dtype=jnp.float32, name="rpb_fc1")(rel))
    bias = nn.Dense(self.num_heads // g, dtype=jnp.float32, name="rpb_fc2")(hidden)
    return bias.transpose(0, 1, 4, 2, 3).reshape(b, self.num_heads, query_pos.shape[1], nk)

  def attend(self, queries, keys, bias, pool_queries: int, deterministic: bool):
    out, _ = self.Attention(self.num_heads, attn_dropout=self.attn_dropout,
                            proj_dropout=self.proj_dropout, dtype=self.dtype,
                            name="attn")(queries, keys, bias=bias, deterministic=deterministic)
    if pool_queries > 1:
      b, q, c = out.shape
      if q % pool_queries:
        raise ValueError(f"DeformableAttention3D: {q} queries are not divisible by "
                         f"pool_queries={pool_queries}")
      out = out.reshape(b, q // pool_queries, pool_queries, c).mean(axis=2)
    return out
