"""Generic transformer pieces: multi-head attention that returns its weights, MLP, drop path."""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from deform3d.ops.batched_matmul import matmul_nn, matmul_nt

Dtype = Any
_NEG_INF = -1e9


class MultiHeadAttention(nn.Module):
  """Multi-head attention over arbitrary leading batch axes.

  ``x_q``: ``(..., Lq, C)``; ``x_kv``: ``(..., Lk, Ckv)``; optional additive ``bias`` and boolean
  ``mask`` broadcastable to ``(..., heads, Lq, Lk)`` (``True`` = may attend). Returns the output
  ``(..., Lq, C)`` and the attention weights ``(..., heads, Lq, Lk)`` (rows sum to 1, computed in
  float32 before dropout). The weights are also sown into the ``intermediates`` collection.

  ``pool_queries=p`` returns the mean of the outputs of every ``p`` consecutive queries,
  ``(..., Lq / p, C)``. It is computed exactly, by averaging the (dropped-out) weights before the
  value product and the output projection, which are linear: ``p`` times less work there.

  ``layout`` (an object with ``split`` and ``merge``) regroups the tokens after the input
  projections: ``split`` maps projected ``(..., L, H, D)`` queries, keys and values to the
  ``(..., L', H, D)`` sequences that attend to each other (e.g. overlapping groups), and
  ``merge`` maps the per-sequence outputs back to ``(..., L, H, D)`` before the output
  projection. Both must be linear, so the projections run once per token, not once per copy.
  ``bias``, ``mask`` and the returned weights are then in the split shape.
  """
  num_heads: int
  out_dim: Optional[int] = None
  attn_dropout: float = 0.0
  proj_dropout: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x_q, x_kv, *, bias=None, mask=None, pool_queries: int = 1, layout=None,
               deterministic: bool = True):
    out_dim = self.out_dim or x_q.shape[-1]
    if out_dim % self.num_heads:
      raise ValueError(f"MultiHeadAttention: width {out_dim} is not divisible by "
                       f"num_heads={self.num_heads}")
    head_dim = out_dim // self.num_heads
    dense = lambda name: nn.DenseGeneral((self.num_heads, head_dim), dtype=self.dtype, name=name)
    q, k, v = dense("query")(x_q), dense("key")(x_kv), dense("value")(x_kv)  # (..., L, H, D)
    if layout is not None:
      q, k, v = layout.split(q), layout.split(k), layout.split(v)
    lead = jnp.broadcast_shapes(q.shape[:-3], k.shape[:-3])
    lq, lk, h = q.shape[-3], k.shape[-3], self.num_heads

    def heads_first(x, length):
      """``(..., L, H, D)`` -> ``(prod(lead) * H, L, D)``: one batch axis, heads before the
      sequence; XLA:CPU runs these small batched matmuls several times faster than the
      many-batch-axis einsum (docs/performance.md)."""
      x = jnp.broadcast_to(x, lead + x.shape[-3:])
      return jnp.moveaxis(x, -2, -3).reshape(-1, length, head_dim)

    q, k, v = heads_first(q, lq), heads_first(k, lk), heads_first(v, lk)
    logits = matmul_nt(q, k) * (head_dim ** -0.5)
    logits = logits.reshape(lead + (h, lq, lk))
    if bias is not None:
      logits = logits + bias.astype(jnp.float32)
    if mask is not None:
      logits = jnp.where(mask, logits, _NEG_INF)
    weights = jax.nn.softmax(logits, axis=-1)
    self.sow("intermediates", "attention", weights)
    dropped = nn.Dropout(self.attn_dropout)(weights, deterministic=deterministic)
    if pool_queries > 1:
      if lq % pool_queries:
        raise ValueError(f"MultiHeadAttention: {lq} queries are not divisible by "
                         f"pool_queries={pool_queries}")
      lq //= pool_queries
      dropped = dropped.reshape(lead + (h, lq, pool_queries, lk)).mean(axis=-2)
    out = matmul_nn(dropped.astype(self.dtype).reshape(-1, lq, lk), v)
    out = jnp.moveaxis(out.reshape(lead + (h, lq, head_dim)), -3, -2)  # (..., Lq, H, D)
    if layout is not None:
      out = layout.merge(out)
    out = nn.DenseGeneral(out_dim, axis=(-2, -1), dtype=self.dtype, name="out")(out)
    out = nn.Dropout(self.proj_dropout)(out, deterministic=deterministic)
    return out, weights


class Mlp(nn.Module):
  """Transformer feed-forward block: Dense -> GELU -> Dropout -> Dense -> Dropout."""
  hidden_dim: int
  dropout: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, deterministic: bool = True):
    c = x.shape[-1]
    x = nn.Dense(self.hidden_dim, dtype=self.dtype, name="fc1")(x)
    x = nn.gelu(x)
    x = nn.Dropout(self.dropout)(x, deterministic=deterministic)
    x = nn.Dense(c, dtype=self.dtype, name="fc2")(x)
    return nn.Dropout(self.dropout)(x, deterministic=deterministic)


class DropPath(nn.Module):
  """Stochastic depth: drops the whole residual branch per example with probability ``rate``."""
  rate: float = 0.0

  @nn.compact
  def __call__(self, x, *, deterministic: bool = True):
    if deterministic or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = jax.random.bernoulli(self.make_rng("dropout"), keep, shape)
    return jnp.where(mask, x / keep, jnp.zeros_like(x))


def standardize(x, dtype: Dtype = jnp.float32, epsilon: float = 1e-6):
  """LayerNorm without scale and bias over the last axis, in ``dtype``: statistics in float32
  (or wider), variance as E[x^2] - E[x]^2 and epsilon as ``layer_norm`` (flax's LayerNorm)."""
  x = x.astype(jnp.promote_types(jnp.float32, x.dtype))
  mean = x.mean(axis=-1, keepdims=True)
  var = jnp.maximum(jnp.square(x).mean(axis=-1, keepdims=True) - jnp.square(mean), 0.0)
  return ((x - mean) * jax.lax.rsqrt(var + epsilon)).astype(dtype)


def layer_norm(name: str, dtype: Dtype) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=1e-6, dtype=dtype, name=name)
