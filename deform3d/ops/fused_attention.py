"""Attention with the deformable attention's relative-position bias computed on the fly (Pallas).

The plain path (``models/deformable.py``) stores the bias ``(B, heads, Q, Nk)`` in float32, then
the logits, then the probabilities, and reads each back in the backward pass: at paper scale
(Q = 3,152 queries, Nk = 408 keys per block) these are most of the step's memory traffic
(docs/performance.md, "Traffic per module"). Here one kernel computes, per tile of queries and
keys,

  ``bias[b, h, q, k] = sum_j w2[j, h] * relu(hq[b, q, j] - hk[b, h // Hg, k, j])``

(the two-layer position MLP of ``DeformableAttention3D.rel_pos_bias`` with its first layer
applied separately to the query and key positions, as ``fast.py`` does), the logits, and an
online softmax (flash attention): the ``(Q, Nk)`` arrays never leave the kernel. The backward
pass recomputes them tile by tile from the stored log-sum-exp, in two kernels (one over query
tiles for ``dq`` and ``dhq``, one over key tiles for ``dk``, ``dv``, ``dhk`` and ``dw2``), as
FlashAttention-2 does.

The MLP's output bias ``b2`` adds the same number to every key of a query row: the softmax
cancels it, so it is not an input (its gradient is exactly 0).

Inputs are read once and outputs written once per kernel; on CPU (and any backend other than
GPU) the kernels run in Pallas interpret mode, which is how they are tested
(``tests/test_fused_attention.py``, against the materialized formula).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

NEG = -1e30  # masked logits (finite: a fully masked tile must not give nan)


def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


def _block(n: int, block: int) -> int:
  """The tile length for a sequence of ``n``: ``block``, or the next power of two (>= 16) when
  the sequence is shorter."""
  return min(block, max(16, pl.next_power_of_2(n)))


def _dot(a, b, contract=((1,), (0,))):
  return jax.lax.dot_general(a, b, (contract, ((), ())), preferred_element_type=jnp.float32)


def _logits(q, k, hq, hk_ref, ks, w2, scale, key_start, key_len):
  """Logits of one tile ``(bq, bk)`` in float32: scaled ``q k^T`` plus the position bias; keys at
  or past ``key_len`` (padding) masked. ``hq``: the tile's query hidden rows, ``hidden`` arrays
  ``(bq,)``; ``hk_ref`` rows ``j`` read at key slice ``ks``."""
  s = _dot(q, k, ((1,), (1,))) * scale
  for j, (hq_j, w) in enumerate(zip(hq, w2)):
    s = s + w * jnp.maximum(hq_j[:, None] - hk_ref[j, ks].astype(jnp.float32)[None, :], 0.0)
  keys = key_start + jax.lax.broadcasted_iota(jnp.int32, s.shape, 1)
  return jnp.where(keys < key_len, s, NEG)


def _fwd_kernel(q_ref, k_ref, v_ref, hq_ref, hk_ref, w2_ref, o_ref, lse_ref, *, scale, block_k,
                key_len, hidden):
  q = q_ref[...]
  bq, d = q.shape
  hq = [hq_ref[j, :].astype(jnp.float32) for j in range(hidden)]
  w2 = [w2_ref[j] for j in range(hidden)]

  def body(i, carry):
    o, m, l = carry
    ks = pl.ds(pl.multiple_of(i * block_k, block_k), block_k)
    s = _logits(q, k_ref[ks, :], hq, hk_ref, ks, w2, scale, i * block_k, key_len)
    m_new = jnp.maximum(m, s.max(axis=1))
    p = jnp.exp(s - m_new[:, None])
    a = jnp.exp(m - m_new)
    l = l * a + p.sum(axis=1)
    o = o * a[:, None] + _dot(p.astype(v_ref.dtype), v_ref[ks, :])
    return o, m_new, l

  init = (jnp.zeros((bq, d), jnp.float32), jnp.full((bq,), NEG, jnp.float32),
          jnp.zeros((bq,), jnp.float32))
  o, m, l = jax.lax.fori_loop(0, k_ref.shape[0] // block_k, body, init)
  o_ref[...] = (o / l[:, None]).astype(o_ref.dtype)
  lse_ref[...] = m + jnp.log(l)


def _dq_kernel(q_ref, k_ref, v_ref, hq_ref, hk_ref, w2_ref, do_ref, lse_ref, delta_ref,
               dq_ref, dhq_ref, *, scale, block_k, key_len, hidden):
  """One query tile: ``dq`` and this head's part of ``d hq``, over all key tiles."""
  q, do = q_ref[...], do_ref[...]
  lse, delta = lse_ref[...], delta_ref[...]
  hq = [hq_ref[j, :].astype(jnp.float32) for j in range(hidden)]
  w2 = [w2_ref[j] for j in range(hidden)]

  def body(i, carry):
    dq, dhq = carry
    ks = pl.ds(pl.multiple_of(i * block_k, block_k), block_k)
    k = k_ref[ks, :]
    s = _logits(q, k, hq, hk_ref, ks, w2, scale, i * block_k, key_len)
    p = jnp.exp(s - lse[:, None])
    ds = p * (_dot(do, v_ref[ks, :], ((1,), (1,))) - delta[:, None])        # d logits
    dq = dq + _dot(ds, k.astype(jnp.float32))
    dhq = tuple(acc + w * jnp.where(hq_j[:, None] > hk_ref[j, ks].astype(jnp.float32)[None, :],
                                    ds, 0.0).sum(axis=1)
                for j, (acc, hq_j, w) in enumerate(zip(dhq, hq, w2)))
    return dq, dhq

  init = (jnp.zeros(q.shape, jnp.float32),
          tuple(jnp.zeros(q.shape[:1], jnp.float32) for _ in range(hidden)))
  dq, dhq = jax.lax.fori_loop(0, k_ref.shape[0] // block_k, body, init)
  dq_ref[...] = (dq * scale).astype(dq_ref.dtype)
  for j in range(hidden):
    dhq_ref[j, :] = dhq[j]


def _dkv_kernel(q_ref, k_ref, v_ref, hq_ref, hk_ref, w2_ref, do_ref, lse_ref, delta_ref,
                dk_ref, dv_ref, dhk_ref, dw2_ref, *, scale, block_q, block_k, key_len, hidden):
  """One key tile: ``dk``, ``dv``, this head's part of ``d hk`` and of ``d w2``, over all query
  tiles."""
  k, v = k_ref[...], v_ref[...]
  key_start = pl.program_id(2) * block_k
  ks = pl.ds(0, block_k)
  w2 = [w2_ref[j] for j in range(hidden)]
  hk = [hk_ref[j, :].astype(jnp.float32) for j in range(hidden)]

  def body(i, carry):
    dk, dv, dhk, dw2 = carry
    qs = pl.ds(pl.multiple_of(i * block_q, block_q), block_q)
    q, do = q_ref[qs, :], do_ref[qs, :]
    hq = [hq_ref[j, qs].astype(jnp.float32) for j in range(hidden)]
    s = _logits(q, k, hq, hk_ref, ks, w2, scale, key_start, key_len)
    p = jnp.exp(s - lse_ref[qs][:, None])
    ds = p * (_dot(do, v, ((1,), (1,))) - delta_ref[qs][:, None])
    dv = dv + _dot(p.astype(do.dtype), do, ((0,), (0,)))
    dk = dk + _dot(ds, q.astype(jnp.float32), ((0,), (0,)))
    new_dhk, new_dw2 = [], []
    for j in range(hidden):
      r = hq[j][:, None] - hk[j][None, :]
      new_dhk.append(dhk[j] - w2[j] * jnp.where(r > 0, ds, 0.0).sum(axis=0))
      new_dw2.append(dw2[j] + (ds * jnp.maximum(r, 0.0)).sum())
    return dk, dv, tuple(new_dhk), tuple(new_dw2)

  zeros_k = jnp.zeros((k.shape[0],), jnp.float32)
  init = (jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32),
          (zeros_k,) * hidden, (jnp.zeros((), jnp.float32),) * hidden)
  dk, dv, dhk, dw2 = jax.lax.fori_loop(0, q_ref.shape[0] // block_q, body, init)
  dk_ref[...] = (dk * scale).astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)
  for j in range(hidden):
    dhk_ref[j, :] = dhk[j]
  dw2_ref[...] = jnp.stack(dw2)


def _specs(b_q, b_k, n_q, n_k, d, hidden, heads_per_group, grid_axis):
  """BlockSpecs of ``q, k, v, hq, hk, w2`` for a grid ``(B, H, tiles)``; ``grid_axis`` says which
  sequence the third grid axis tiles (``"q"`` or ``"k"``); the other is read whole."""
  if grid_axis == "q":
    qi, ki, bq, bk = (lambda t: t), (lambda t: 0), b_q, n_k
  else:
    qi, ki, bq, bk = (lambda t: 0), (lambda t: t), n_q, b_k
  return [
      pl.BlockSpec((None, None, bq, d), lambda b, h, t: (b, h, qi(t), 0)),
      pl.BlockSpec((None, None, bk, d), lambda b, h, t: (b, h, ki(t), 0)),
      pl.BlockSpec((None, None, bk, d), lambda b, h, t: (b, h, ki(t), 0)),
      pl.BlockSpec((None, hidden, bq), lambda b, h, t: (b, 0, qi(t))),
      pl.BlockSpec((None, None, hidden, bk), lambda b, h, t: (b, h // heads_per_group, 0, ki(t))),
      pl.BlockSpec((None, hidden), lambda b, h, t: (h, 0)),
  ]


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _attention(q, k, v, hq, hk, w2, static):
  return _forward(q, k, v, hq, hk, w2, static)[0]


def _forward(q, k, v, hq, hk, w2, static):
  block_q, block_k, key_len, interpret = static
  b, h, n_q, d = q.shape
  n_k, hidden, groups = k.shape[2], hq.shape[1], hk.shape[1]
  grid = (b, h, n_q // block_q)
  kernel = functools.partial(_fwd_kernel, scale=d ** -0.5, block_k=block_k, key_len=key_len,
                             hidden=hidden)
  o, lse = pl.pallas_call(
      kernel, grid=grid,
      in_specs=_specs(block_q, block_k, n_q, n_k, d, hidden, h // groups, "q"),
      out_specs=[pl.BlockSpec((None, None, block_q, d), lambda b, h, t: (b, h, t, 0)),
                 pl.BlockSpec((None, None, block_q), lambda b, h, t: (b, h, t))],
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct((b, h, n_q), jnp.float32)],
      interpret=interpret, name="deformable_attention_fwd")(q, k, v, hq, hk, w2)
  return o, lse


def _attention_fwd(q, k, v, hq, hk, w2, static):
  o, lse = _forward(q, k, v, hq, hk, w2, static)
  return o, (q, k, v, hq, hk, w2, o, lse)


def _attention_bwd(static, res, do):
  block_q, block_k, key_len, interpret = static
  q, k, v, hq, hk, w2, o, lse = res
  b, h, n_q, d = q.shape
  n_k, hidden, groups = k.shape[2], hq.shape[1], hk.shape[1]
  do = do.astype(q.dtype)
  delta = (o.astype(jnp.float32) * do.astype(jnp.float32)).sum(axis=-1)   # (B, H, Q)
  row = lambda n: pl.BlockSpec((None, None, n), lambda b, h, t: (b, h, 0))
  common = dict(scale=d ** -0.5, block_k=block_k, key_len=key_len, hidden=hidden)

  dq, dhq = pl.pallas_call(
      functools.partial(_dq_kernel, **common), grid=(b, h, n_q // block_q),
      in_specs=_specs(block_q, block_k, n_q, n_k, d, hidden, h // groups, "q") + [
          pl.BlockSpec((None, None, block_q, d), lambda b, h, t: (b, h, t, 0)),
          pl.BlockSpec((None, None, block_q), lambda b, h, t: (b, h, t)),
          pl.BlockSpec((None, None, block_q), lambda b, h, t: (b, h, t))],
      out_specs=[pl.BlockSpec((None, None, block_q, d), lambda b, h, t: (b, h, t, 0)),
                 pl.BlockSpec((None, None, hidden, block_q), lambda b, h, t: (b, h, 0, t))],
      out_shape=[jax.ShapeDtypeStruct(q.shape, q.dtype),
                 jax.ShapeDtypeStruct((b, h, hidden, n_q), jnp.float32)],
      interpret=interpret, name="deformable_attention_dq")(q, k, v, hq, hk, w2, do, lse, delta)

  nkt = n_k // block_k
  dk, dv, dhk, dw2 = pl.pallas_call(
      functools.partial(_dkv_kernel, block_q=block_q, **common), grid=(b, h, nkt),
      in_specs=_specs(block_q, block_k, n_q, n_k, d, hidden, h // groups, "k") + [
          pl.BlockSpec((None, None, n_q, d), lambda b, h, t: (b, h, 0, 0)), row(n_q), row(n_q)],
      out_specs=[pl.BlockSpec((None, None, block_k, d), lambda b, h, t: (b, h, t, 0)),
                 pl.BlockSpec((None, None, block_k, d), lambda b, h, t: (b, h, t, 0)),
                 pl.BlockSpec((None, None, hidden, block_k), lambda b, h, t: (b, h, 0, t)),
                 pl.BlockSpec((None, None, None, hidden), lambda b, h, t: (b, h, t, 0))],
      out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype), jax.ShapeDtypeStruct(v.shape, v.dtype),
                 jax.ShapeDtypeStruct((b, h, hidden, n_k), jnp.float32),
                 jax.ShapeDtypeStruct((b, h, nkt, hidden), jnp.float32)],
      interpret=interpret, name="deformable_attention_dkv")(q, k, v, hq, hk, w2, do, lse, delta)

  dhq = dhq.sum(axis=1).astype(hq.dtype)                                    # over heads
  dhk = dhk.reshape(b, groups, h // groups, hidden, n_k).sum(axis=2).astype(hk.dtype)
  dw2 = dw2.sum(axis=(0, 2)).astype(w2.dtype)                               # (H, hidden)
  return dq, dk, dv, dhq, dhk, dw2


_attention.defvjp(_attention_fwd, _attention_bwd)


def deformable_attention(q, k, v, query_hidden, key_hidden, w2, *, block_q: int = 64,
                         block_k: int = 64, interpret=None):
  """``softmax(q k^T / sqrt(D) + bias) v`` without storing the ``(Q, Nk)`` bias or weights.

  ``q (B, H, Q, D)``; ``k, v (B, H, Nk, D)``; ``query_hidden (B, Q, hidden)`` the position MLP's
  first layer on the query positions (``W1 q + b1``); ``key_hidden (B, G, Nk, hidden)`` on the
  key positions of each of ``G`` groups (``W1 p``; head ``h`` uses group ``h // (H / G)``);
  ``w2 (hidden, H)`` the second layer's weight per head. Returns ``(B, H, Q, D)`` in ``q``'s
  dtype; the logits and the softmax are float32. Differentiable in every array argument
  (custom VJP that recomputes; no ``(Q, Nk)`` residual).

  ``interpret``: run the kernels in Pallas interpret mode; default: unless the backend is GPU.
  Sequences are padded to the tile lengths (padded keys masked, padded queries dropped).
  """
  b, h, n_q, d = q.shape
  n_k = k.shape[2]
  groups = key_hidden.shape[1]
  if (k.shape != (b, h, n_k, d) or v.shape != k.shape or query_hidden.shape[:2] != (b, n_q)
      or key_hidden.shape[::2] != (b, n_k) or h % groups
      or w2.shape != (query_hidden.shape[-1], h) or key_hidden.shape[-1] != w2.shape[0]):
    raise ValueError(
        "deformable_attention: expected q (B, H, Q, D), k and v (B, H, Nk, D), query_hidden "
        "(B, Q, hidden), key_hidden (B, G, Nk, hidden) with G dividing H, w2 (hidden, H); got "
        f"q {q.shape}, k {k.shape}, v {v.shape}, query_hidden {query_hidden.shape}, "
        f"key_hidden {key_hidden.shape}, w2 {w2.shape}")
  if interpret is None:
    interpret = jax.default_backend() != "gpu"
  bq, bk = _block(n_q, block_q), _block(n_k, block_k)
  pq, pk = _round_up(n_q, bq) - n_q, _round_up(n_k, bk) - n_k
  pad = lambda x, axis, n: jnp.pad(x, [(0, n if a == axis else 0) for a in range(x.ndim)])
  q, hq = pad(q, 2, pq), pad(jnp.swapaxes(query_hidden, 1, 2), 2, pq)      # hq (B, hid, Q)
  k, v = pad(k, 2, pk), pad(v, 2, pk)
  hk = pad(jnp.swapaxes(key_hidden, 2, 3), 3, pk)                          # (B, G, hid, Nk)
  out = _attention(q, k, v, hq.astype(jnp.float32), hk.astype(jnp.float32),
                   jnp.swapaxes(w2, 0, 1).astype(jnp.float32), (bq, bk, n_k, bool(interpret)))
  return out[:, :, :n_q]


def reference(q, k, v, query_hidden, key_hidden, w2, bias_dtype=jnp.float32):
  """The same function, materialized (the bias, logits and weights ``(B, H, Q, Nk)``): for tests
  and for the traffic comparison. ``bias_dtype``: the dtype the bias is rounded to (an XLA-only
  traffic cut measured in docs/performance.md; float32 is the model's)."""
  b, h, n_q, d = q.shape
  groups = key_hidden.shape[1]
  rel = jax.nn.relu(query_hidden[:, None, :, None, :] - key_hidden[:, :, None, :, :])
  w = w2.reshape(w2.shape[0], groups, h // groups)
  bias = jnp.einsum("bgqkj,jgi->bgiqk", rel, w).reshape(b, h, n_q, -1).astype(bias_dtype)
  logits = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32) * d ** -0.5
  weights = jax.nn.softmax(logits + bias.astype(jnp.float32), axis=-1)
  return jnp.einsum("bhqk,bhkd->bhqd", weights.astype(v.dtype), v).astype(q.dtype)
