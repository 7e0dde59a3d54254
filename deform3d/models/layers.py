"""Generic transformer pieces in their plain form: multi-head attention that returns its weights,
MLP, drop path, LayerNorm. The speed rewrites of these live in ``deform3d/models/fast.py``."""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
NEG_INF = -1e9


class MultiHeadAttention(nn.Module):
  """Multi-head attention over arbitrary leading batch axes.

  ``x_q``: ``(..., Lq, C)``; ``x_kv``: ``(..., Lk, Ckv)``; optional additive ``bias`` and boolean
  ``mask`` broadcastable to ``(..., heads, Lq, Lk)`` (``True`` = may attend). Returns the output
  ``(..., Lq, C)`` and the attention weights ``(..., heads, Lq, Lk)`` (rows sum to 1, computed in
  float32 before dropout). The weights are also sown into the ``intermediates`` collection.
  """
  num_heads: int
  out_dim: Optional[int] = None
  attn_dropout: float = 0.0
  proj_dropout: float = 0.0
  dtype: Dtype = jnp.float32

  def project(self, x_q, x_kv):
    """Queries, keys and values ``(..., L, heads, head_dim)``."""
    out_dim = self.out_dim or x_q.shape[-1]
    if out_dim % self.num_heads:
      raise ValueError(f"MultiHeadAttention: width {out_dim} is not divisible by "
                       f"num_heads={self.num_heads}")
    dense = lambda name: nn.DenseGeneral((self.num_heads, out_dim // self.num_heads),
                                         dtype=self.dtype, name=name)
    return dense("query")(x_q), dense("key")(x_kv), dense("value")(x_kv)

  def weights(self, q, k, bias, mask):
    """Softmax attention weights ``(..., heads, Lq, Lk)`` in float32; sown."""
    logits = jnp.einsum("...qhd,...khd->...hqk", q, k,
                        preferred_element_type=jnp.float32) * (q.shape[-1] ** -0.5)
    return self.softmax(logits, bias, mask)

  def softmax(self, logits, bias, mask):
    """Adds ``bias``, masks, and normalizes float32 ``logits (..., heads, Lq, Lk)``; sown."""
    if bias is not None:
      logits = logits + bias.astype(jnp.float32)
    if mask is not None:
      logits = jnp.where(mask, logits, NEG_INF)
    weights = jax.nn.softmax(logits, axis=-1)
    self.sow("intermediates", "attention", weights)
    return weights

  def output(self, out, deterministic):
    """Output projection of ``(..., L, heads, head_dim)`` and dropout."""
    out = nn.DenseGeneral(out.shape[-2] * out.shape[-1], axis=(-2, -1), dtype=self.dtype,
                          name="out")(out)
    return nn.Dropout(self.proj_dropout)(out, deterministic=deterministic)

  @nn.compact
  def __call__(self, x_q, x_kv, *, bias=None, mask=None, deterministic: bool = True):
    q, k, v = self.project(x_q, x_kv)
    weights = self.weights(q, k, bias, mask)
    dropped = nn.Dropout(self.attn_dropout)(weights, deterministic=deterministic)
    out = jnp.einsum("...hqk,...khd->...qhd", dropped.astype(self.dtype), v)
    return self.output(out, deterministic), weights


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
  """Stochastic depth: drops the whole residual branch per example with probability ``rate``
  (a number, or a scalar array when blocks are scanned and each has its own rate)."""
  rate: Any = 0.0

  @nn.compact
  def __call__(self, x, *, deterministic: bool = True, noise=None):
    """``noise``: ``(B,)`` uniform draws in ``[0, 1)`` to use instead of drawing here (scanned
    blocks draw them for the whole stage at once: no random-number program in the loop)."""
    if deterministic or (isinstance(self.rate, (int, float)) and self.rate == 0.0):
      return x
    keep = 1.0 - self.rate
    if not isinstance(keep, float):
      keep = jnp.asarray(keep, x.dtype)  # as a Python float would be promoted
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    if noise is not None:
      mask = (noise < keep).reshape(shape)
    else:
      mask = jax.random.bernoulli(self.make_rng("dropout"), keep, shape)
    return jnp.where(mask, x / keep, jnp.zeros_like(x))


def layer_norm(name: str, dtype: Dtype) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=1e-6, dtype=dtype, name=name)
