"""Attention with the deformable attention's relative-position bias computed on the fly (Pallas).

The plain path (``models/deformable.py``) stores the bias ``(B, heads, Q, Nk)`` in float32, then
the logits, then the probabilities, and reads each back in the backward pass: at paper scale
(Q = 3,152 queries, Nk = 408 keys per block) these are most of the step's memory traffic
(docs/performance.md). Here one kernel computes, per tile of queries and keys,

  ``bias[b, h, q, k] = sum_j w2[j, h] * relu(hq[b, q, j] - hk[b, h // Hg, k, j])``

(the two-layer position MLP of ``DeformableAttention3D.rel_pos_bias`` with its first layer
applied separately to the query and key positions, as ``fast.py`` does), the logits, and an
online softmax (flash attention): the ``(Q, Nk)`` arrays never leave the kernel. The backward
pass recomputes them tile by tile from the stored log-sum-exp, in two kernels (one over query
tiles for ``dq`` and ``dhq``, one over key tiles for ``dk``, ``dv``, ``dhk`` and ``dw2``), as
FlashAttention-2 does. The residuals of the forward pass are its inputs, its output and the
log-sum-exp ``(B, H, Q)``.

The MLP's output bias ``b2`` adds the same number to every key of a query row: the softmax
cancels it, so it is not an input (its gradient is exactly 0).

**One op, one lowering per platform** (docs/accelerators.md). The platform is the one the
program is lowered for, not the host that traces it (``jax.lax.platform_dependent``): a program
traced on a CPU host and lowered for ``cuda`` or ``tpu`` gets that platform's kernel.

* ``cuda`` / ``rocm``: Triton (explicit ``pallas.triton.CompilerParams``). Triton takes this
  kernel's shapes as they are: power-of-two tiles of 16-64 rows, the whole key or query
  sequence as one block that the kernel slices, 1-D scalars per head. Mosaic GPU (jax's default
  for Pallas on GPU) asks for warpgroup-sized copies and at most 256 rows per copy, which the
  whole-sequence blocks are not.
* ``tpu``: Mosaic TPU. Every block's last two dimensions are multiples of (8, 128) or the
  array's own: tiles of 128 queries and keys, the log-sum-exp and ``delta`` with a lane axis of
  128 inside the kernels (stored compact outside), the per-head MLP weights ``w2`` in SMEM.
* ``cpu`` (and any other platform): ``implementation="pallas"`` runs the same kernels in Pallas
  interpret mode (how they are tested); ``implementation="auto"`` computes the same custom VJP
  with XLA ops instead (``_xla_forward`` / ``_xla_backward``: the ``(Q, Nk)`` arrays
  materialized, one attention at a time), which is what a CPU should run.

The numerics of every variant are tested against the materialized formula ``reference``
(``tests/test_fused_attention.py``: the GPU and the TPU kernels in interpret mode, the XLA form
compiled), and the GPU and TPU programs are lowered (and the TPU ones compiled) from a CPU host
in ``tests/test_lowering.py``.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu
from jax.experimental.pallas import triton as pltriton
from jax.sharding import PartitionSpec as P

NEG = -1e30  # masked logits (finite: a fully masked tile must not give nan)
IMPLEMENTATIONS = ("pallas", "auto")
# The forms ``deformable_attention(variant=...)`` can force: the kernels by the platform they are
# laid out for ("interpret", "tpu_interpret": those layouts in Pallas interpret mode) and the
# XLA form.
VARIANTS = ("gpu", "tpu", "interpret", "tpu_interpret", "xla")
TPU_LANES = 128


def _round_up(n: int, m: int) -> int:
  return -(-n // m) * m


def _dot(a, b, contract=((1,), (0,))):
  return jax.lax.dot_general(a, b, (contract, ((), ())), preferred_element_type=jnp.float32)


@dataclasses.dataclass(frozen=True)
class _Variant:
  """How one platform's kernels are laid out: tile lengths, the lane width of the per-query
  statistics (log-sum-exp, ``delta``), where ``w2`` lives, the compiler parameters."""
  name: str
  block_q: int
  block_k: int
  lanes: int                   # width of the lse/delta blocks (TPU: one vreg of lanes)
  w2_smem: bool                # w2 as one flat SMEM array (TPU) or a per-head block
  interpret: bool
  compiler_params: Any = None

  def tiles(self, n_q: int, n_k: int) -> tuple:
    if self.name == "tpu":
      # (8, 128): a tile of 128, or the whole (padded) sequence when it is shorter.
      tile = lambda n, b: b if n > b else _round_up(n, 8)
    else:
      # Power-of-two tiles (Triton), at least 16 (the matmul units' smallest), at most ``b``.
      tile = lambda n, b: min(b, max(16, pl.next_power_of_2(n)))
    return tile(n_q, self.block_q), tile(n_k, self.block_k)


def _variant(name: str, block_q: int, block_k: int) -> _Variant:
  if name == "tpu":
    sem = ("parallel",) * 3
    return _Variant("tpu", 128, 128, TPU_LANES, True, False,
                    pltpu.CompilerParams(dimension_semantics=sem))
  if name == "gpu":
    return _Variant("gpu", block_q, block_k, 1, False, False,
                    pltriton.CompilerParams(num_warps=4, num_stages=2))
  if name == "interpret":
    return _Variant("interpret", block_q, block_k, 1, False, True)
  if name == "tpu_interpret":  # the TPU variant's shapes, interpreted (tests)
    return _Variant("tpu", 128, 128, TPU_LANES, True, True)
  raise ValueError(f"fused_attention: unknown variant {name!r}")


# -- kernels ---------------------------------------------------------------------------------
# Every value inside is 2-D (Mosaic TPU lays out rows on sublanes and columns on lanes):
# per-query statistics are columns (bq, 1), per-key ones rows (1, bk).

def _w2_reader(w2_ref, hidden: int, smem: bool):
  if smem:  # flat (H * hidden,) in SMEM, this head's row
    h = pl.program_id(1)
    return [w2_ref[h * hidden + j] for j in range(hidden)]
  return [w2_ref[j] for j in range(hidden)]


def _logits(q, k, hq, hk, w2, scale, key_start, key_len):
  """Logits of one tile ``(bq, bk)`` in float32: scaled ``q k^T`` plus the position bias; keys at
  or past ``key_len`` (padding) masked. ``hq``: ``hidden`` columns ``(bq, 1)``; ``hk``:
  ``hidden`` rows ``(1, bk)``."""
  s = _dot(q, k, ((1,), (1,))) * scale
  for hq_j, hk_j, w in zip(hq, hk, w2):
    s = s + w * jnp.maximum(hq_j - hk_j, 0.0)
  keys = key_start + jax.lax.broadcasted_iota(jnp.int32, s.shape, 1)
  return jnp.where(keys < key_len, s, NEG)


def _columns(ref, rows, hidden):
  """``hidden`` float32 columns ``(rows, 1)`` of a ``(.., hidden)`` ref."""
  return [ref[rows, pl.ds(j, 1)].astype(jnp.float32) for j in range(hidden)]


def _key_rows(ref, cols, hidden):
  """``hidden`` float32 rows ``(1, cols)`` of a ``(hidden, ..)`` ref."""
  return [ref[pl.ds(j, 1), cols].astype(jnp.float32) for j in range(hidden)]


def _fwd_kernel(q_ref, k_ref, v_ref, hq_ref, hk_ref, w2_ref, o_ref, lse_ref, *, scale, block_k,
                key_len, hidden, w2_smem):
  q = q_ref[...]
  bq, d = q.shape
  hq = _columns(hq_ref, slice(None), hidden)
  w2 = _w2_reader(w2_ref, hidden, w2_smem)

  def body(i, carry):
    o, m, l = carry
    ks = pl.ds(pl.multiple_of(i * block_k, block_k), block_k)
    s = _logits(q, k_ref[ks, :], hq, _key_rows(hk_ref, ks, hidden), w2, scale, i * block_k,
                key_len)
    m_new = jnp.maximum(m, s.max(axis=1, keepdims=True))
    p = jnp.exp(s - m_new)
    a = jnp.exp(m - m_new)
    l = l * a + p.sum(axis=1, keepdims=True)
    o = o * a + _dot(p.astype(v_ref.dtype), v_ref[ks, :])
    return o, m_new, l

  init = (jnp.zeros((bq, d), jnp.float32), jnp.full((bq, 1), NEG, jnp.float32),
          jnp.zeros((bq, 1), jnp.float32))
  o, m, l = jax.lax.fori_loop(0, k_ref.shape[0] // block_k, body, init)
  o_ref[...] = (o / l).astype(o_ref.dtype)
  lse_ref[...] = jnp.broadcast_to(m + jnp.log(l), lse_ref.shape)


def _dq_kernel(q_ref, k_ref, v_ref, hq_ref, hk_ref, w2_ref, do_ref, lse_ref, delta_ref,
               dq_ref, dhq_ref, *, scale, block_k, key_len, hidden, w2_smem):
  """One query tile: ``dq`` and this head's part of ``d hq``, over all key tiles."""
  q, do = q_ref[...], do_ref[...]
  lse, delta = lse_ref[:, pl.ds(0, 1)], delta_ref[:, pl.ds(0, 1)]          # (bq, 1)
  hq = _columns(hq_ref, slice(None), hidden)
  w2 = _w2_reader(w2_ref, hidden, w2_smem)

  def body(i, carry):
    dq, dhq = carry
    ks = pl.ds(pl.multiple_of(i * block_k, block_k), block_k)
    k = k_ref[ks, :]
    hk = _key_rows(hk_ref, ks, hidden)
    s = _logits(q, k, hq, hk, w2, scale, i * block_k, key_len)
    p = jnp.exp(s - lse)
    ds = p * (_dot(do, v_ref[ks, :], ((1,), (1,))) - delta)                 # d logits
    dq = dq + _dot(ds, k.astype(jnp.float32))
    dhq = tuple(acc + w * jnp.where(hq_j > hk_j, ds, 0.0).sum(axis=1, keepdims=True)
                for acc, hq_j, hk_j, w in zip(dhq, hq, hk, w2))
    return dq, dhq

  init = (jnp.zeros(q.shape, jnp.float32),
          tuple(jnp.zeros((q.shape[0], 1), jnp.float32) for _ in range(hidden)))
  dq, dhq = jax.lax.fori_loop(0, k_ref.shape[0] // block_k, body, init)
  dq_ref[...] = (dq * scale).astype(dq_ref.dtype)
  for j in range(hidden):
    dhq_ref[:, pl.ds(j, 1)] = dhq[j]


def _dkv_kernel(q_ref, k_ref, v_ref, hq_ref, hk_ref, w2_ref, do_ref, lse_ref, delta_ref,
                dk_ref, dv_ref, dhk_ref, dw2_ref, *, scale, block_q, block_k, key_len, hidden,
                w2_smem):
  """One key tile: ``dk``, ``dv``, this head's part of ``d hk`` and, per key, of ``d w2``, over
  all query tiles."""
  k, v = k_ref[...], v_ref[...]
  key_start = pl.program_id(2) * block_k
  w2 = _w2_reader(w2_ref, hidden, w2_smem)
  hk = _key_rows(hk_ref, slice(None), hidden)

  def body(i, carry):
    dk, dv, dhk, dw2 = carry
    qs = pl.ds(pl.multiple_of(i * block_q, block_q), block_q)
    q, do = q_ref[qs, :], do_ref[qs, :]
    hq = _columns(hq_ref, qs, hidden)
    s = _logits(q, k, hq, hk, w2, scale, key_start, key_len)
    p = jnp.exp(s - lse_ref[qs, pl.ds(0, 1)])
    ds = p * (_dot(do, v, ((1,), (1,))) - delta_ref[qs, pl.ds(0, 1)])
    dv = dv + _dot(p.T.astype(do.dtype), do)
    dk = dk + _dot(ds.T, q.astype(jnp.float32))
    new_dhk, new_dw2 = [], []
    for j in range(hidden):
      r = hq[j] - hk[j]
      new_dhk.append(dhk[j] - w2[j] * jnp.where(r > 0, ds, 0.0).sum(axis=0, keepdims=True))
      new_dw2.append(dw2[j] + (ds * jnp.maximum(r, 0.0)).sum(axis=0, keepdims=True))
    return dk, dv, tuple(new_dhk), tuple(new_dw2)

  row = jnp.zeros((1, k.shape[0]), jnp.float32)
  init = (jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32),
          (row,) * hidden, (row,) * hidden)
  dk, dv, dhk, dw2 = jax.lax.fori_loop(0, q_ref.shape[0] // block_q, body, init)
  dk_ref[...] = (dk * scale).astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)
  for j in range(hidden):
    dhk_ref[pl.ds(j, 1), :] = dhk[j]
    dw2_ref[pl.ds(j, 1), :] = dw2[j]


# -- calls -------------------------------------------------------------------------------------

def _specs(var: _Variant, b_q, b_k, n_q, n_k, d, hidden, heads_per_group, grid_axis):
  """BlockSpecs of ``q, k, v, hq, hk, w2`` for a grid ``(B, H, tiles)``; ``grid_axis`` says which
  sequence the third grid axis tiles (``"q"`` or ``"k"``); the other is read whole."""
  if grid_axis == "q":
    qi, ki, bq, bk = (lambda t: t), (lambda t: 0), b_q, n_k
  else:
    qi, ki, bq, bk = (lambda t: 0), (lambda t: t), n_q, b_k
  if var.w2_smem:
    w2 = pl.BlockSpec(memory_space=pltpu.SMEM)
  else:
    w2 = pl.BlockSpec((None, hidden), lambda b, h, t: (h, 0))
  return [
      pl.BlockSpec((None, None, bq, d), lambda b, h, t: (b, h, qi(t), 0)),
      pl.BlockSpec((None, None, bk, d), lambda b, h, t: (b, h, ki(t), 0)),
      pl.BlockSpec((None, None, bk, d), lambda b, h, t: (b, h, ki(t), 0)),
      pl.BlockSpec((None, bq, hidden), lambda b, h, t: (b, qi(t), 0)),
      pl.BlockSpec((None, None, hidden, bk), lambda b, h, t: (b, h // heads_per_group, 0, ki(t))),
      w2,
  ]


def _pad(x, axis, size):
  if x.shape[axis] == size:
    return x
  return jnp.pad(x, [(0, size - x.shape[axis] if a == axis else 0) for a in range(x.ndim)])


def _padded(var, q, k, v, hq, hk, w2):
  """The kernel's operands: sequences padded to whole tiles, ``hk`` as ``(B, G, hidden, Nk)``,
  ``w2`` as ``(H, hidden)`` float32 (flat for SMEM)."""
  n_q, n_k = q.shape[2], k.shape[2]
  bq, bk = var.tiles(n_q, n_k)
  pq, pk = _round_up(n_q, bq), _round_up(n_k, bk)
  q, hq = _pad(q, 2, pq), _pad(hq.astype(jnp.float32), 1, pq)
  k, v = _pad(k, 2, pk), _pad(v, 2, pk)
  hk = _pad(jnp.swapaxes(hk, 2, 3).astype(jnp.float32), 3, pk)
  w2 = jnp.swapaxes(w2, 0, 1).astype(jnp.float32)                          # (H, hidden)
  if var.w2_smem:
    w2 = w2.reshape(-1)
  return (bq, bk), (q, k, v, hq, hk, w2)


def _call(var, kernel, grid, in_specs, out_specs, out_shape, name, cost):
  """``pallas_call`` with the variant's backend settings. ``cost``: ``(flops, transcendentals)``
  of the whole call; with the bytes of its inputs and outputs (each read or written once) it is
  the cost XLA counts for the kernel (which it cannot see into)."""
  flops, transcendentals = cost

  def call(*args):
    nbytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves((args, out_shape)))
    estimate = pl.CostEstimate(flops=int(flops), transcendentals=int(transcendentals),
                               bytes_accessed=int(nbytes))
    return pl.pallas_call(kernel, grid=grid, in_specs=in_specs, out_specs=out_specs,
                          out_shape=out_shape, interpret=var.interpret,
                          compiler_params=var.compiler_params, name=name,
                          cost_estimate=estimate)(*args)
  return call


def _tile_cost(b, h, pq, pk, d, hidden, matmuls):
  """FLOPs and exponentials of ``matmuls`` ``(Q, Nk, D)`` products plus the bias (4 ops per
  hidden unit and pair: subtract, max, multiply, add) over every tile of a call."""
  pairs = b * h * pq * pk
  return 2 * matmuls * pairs * d + 4 * hidden * pairs, pairs


def _kernel_forward(var: _Variant, q, k, v, hq, hk, w2):
  """``(o, lse)`` by the Pallas kernel; ``lse (B, H, Q)`` float32."""
  b, h, n_q, d = q.shape
  n_k, hidden, groups = k.shape[2], hq.shape[2], hk.shape[1]
  (bq, bk), (qp, kp, vp, hqp, hkp, w2p) = _padded(var, q, k, v, hq, hk, w2)
  common = dict(scale=d ** -0.5, key_len=n_k, hidden=hidden, w2_smem=var.w2_smem)
  o, lse = _call(
      var, functools.partial(_fwd_kernel, block_k=bk, **common), (b, h, qp.shape[2] // bq),
      _specs(var, bq, bk, qp.shape[2], kp.shape[2], d, hidden, h // groups, "q"),
      [pl.BlockSpec((None, None, bq, d), lambda b, h, t: (b, h, t, 0)),
       pl.BlockSpec((None, None, bq, var.lanes), lambda b, h, t: (b, h, t, 0))],
      [jax.ShapeDtypeStruct(qp.shape, q.dtype),
       jax.ShapeDtypeStruct(qp.shape[:3] + (var.lanes,), jnp.float32)],
      "deformable_attention_fwd",
      _tile_cost(b, h, qp.shape[2], kp.shape[2], d, hidden, 2))(qp, kp, vp, hqp, hkp, w2p)
  return o[:, :, :n_q], lse[:, :, :n_q, 0]


def _kernel_backward(var: _Variant, q, k, v, hq, hk, w2, o, lse, do):
  b, h, n_q, d = q.shape
  n_k, hidden, groups = k.shape[2], hq.shape[2], hk.shape[1]
  (bq, bk), (qp, kp, vp, hqp, hkp, w2p) = _padded(var, q, k, v, hq, hk, w2)
  pq, pk = qp.shape[2], kp.shape[2]
  delta = (o.astype(jnp.float32) * do.astype(jnp.float32)).sum(axis=-1)    # (B, H, Q)
  # Padded queries: lse = +1e30 gives them zero weights (their do and delta are 0).
  lanes = lambda x, fill: jnp.broadcast_to(
      jnp.pad(x, ((0, 0), (0, 0), (0, pq - n_q)), constant_values=fill)[..., None],
      (b, h, pq, var.lanes))
  lse_l, delta_l, do_p = lanes(lse, 1e30), lanes(delta, 0.0), _pad(do, 2, pq)
  common = dict(scale=d ** -0.5, key_len=n_k, hidden=hidden, w2_smem=var.w2_smem)
  stat = lambda n, qi: pl.BlockSpec((None, None, n, var.lanes), lambda b, h, t: (b, h, qi(t), 0))

  dq, dhq = _call(
      var, functools.partial(_dq_kernel, block_k=bk, **common), (b, h, pq // bq),
      _specs(var, bq, bk, pq, pk, d, hidden, h // groups, "q") + [
          pl.BlockSpec((None, None, bq, d), lambda b, h, t: (b, h, t, 0)),
          stat(bq, lambda t: t), stat(bq, lambda t: t)],
      [pl.BlockSpec((None, None, bq, d), lambda b, h, t: (b, h, t, 0)),
       pl.BlockSpec((None, None, bq, hidden), lambda b, h, t: (b, h, t, 0))],
      [jax.ShapeDtypeStruct(qp.shape, q.dtype),
       jax.ShapeDtypeStruct((b, h, pq, hidden), jnp.float32)],
      "deformable_attention_dq", _tile_cost(b, h, pq, pk, d, hidden, 3))(
          qp, kp, vp, hqp, hkp, w2p, do_p, lse_l, delta_l)

  dk, dv, dhk, dw2 = _call(
      var, functools.partial(_dkv_kernel, block_q=bq, block_k=bk, **common), (b, h, pk // bk),
      _specs(var, bq, bk, pq, pk, d, hidden, h // groups, "k") + [
          pl.BlockSpec((None, None, pq, d), lambda b, h, t: (b, h, 0, 0)),
          stat(pq, lambda t: 0), stat(pq, lambda t: 0)],
      [pl.BlockSpec((None, None, bk, d), lambda b, h, t: (b, h, t, 0)),
       pl.BlockSpec((None, None, bk, d), lambda b, h, t: (b, h, t, 0)),
       pl.BlockSpec((None, None, hidden, bk), lambda b, h, t: (b, h, 0, t)),
       pl.BlockSpec((None, None, hidden, bk), lambda b, h, t: (b, h, 0, t))],
      [jax.ShapeDtypeStruct(kp.shape, k.dtype), jax.ShapeDtypeStruct(vp.shape, v.dtype),
       jax.ShapeDtypeStruct((b, h, hidden, pk), jnp.float32),
       jax.ShapeDtypeStruct((b, h, hidden, pk), jnp.float32)],
      "deformable_attention_dkv", _tile_cost(b, h, pq, pk, d, hidden, 4))(
          qp, kp, vp, hqp, hkp, w2p, do_p, lse_l, delta_l)

  dhq = dhq[:, :, :n_q].sum(axis=1)                                         # over heads
  dhk = jnp.swapaxes(dhk[..., :n_k].reshape(b, groups, h // groups, hidden, n_k).sum(axis=2),
                     2, 3)                                                  # (B, G, Nk, hid)
  dw2 = jnp.swapaxes(dw2.sum(axis=(0, 3)), 0, 1)                            # (hidden, H)
  return dq[:, :, :n_q], dk[:, :, :n_k], dv[:, :, :n_k], dhq, dhk, dw2


# -- the same custom VJP in XLA ops (CPU under implementation="auto") ---------------------------

def _xla_bias_parts(q, hq, hk):
  """``relu(hq - hk)`` per hidden unit, ``(B, G, 1, Q, Nk)`` each, as a list (one fused loop per
  unit, as in ``fast.py``)."""
  return [jax.nn.relu(hq[:, None, None, :, None, j] - hk[:, :, None, None, :, j])
          for j in range(hq.shape[-1])]


def _xla_logits(q, k, hq, hk, w2):
  b, h, n_q, d = q.shape
  groups = hk.shape[1]
  s = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32) * d ** -0.5
  s = s.reshape(b, groups, h // groups, n_q, -1)
  w = w2.astype(jnp.float32).reshape(w2.shape[0], groups, h // groups)
  parts = _xla_bias_parts(q, hq.astype(jnp.float32), hk.astype(jnp.float32))
  for j, part in enumerate(parts):
    s = s + w[j][None, :, :, None, None] * part
  return s, parts


def _xla_forward(q, k, v, hq, hk, w2):
  b, h, n_q, _ = q.shape
  s, _ = _xla_logits(q, k, hq, hk, w2)
  lse = jax.nn.logsumexp(s, axis=-1)
  p = jnp.exp(s - lse[..., None]).reshape(b, h, n_q, -1)
  o = jnp.einsum("bhqk,bhkd->bhqd", p.astype(v.dtype), v,
                 preferred_element_type=jnp.float32).astype(q.dtype)
  return o, lse.reshape(b, h, n_q)


def _xla_backward(q, k, v, hq, hk, w2, o, lse, do):
  b, h, n_q, d = q.shape
  groups, hidden = hk.shape[1], hq.shape[-1]
  s, parts = _xla_logits(q, k, hq, hk, w2)
  p = jnp.exp(s - lse.reshape(b, groups, h // groups, n_q)[..., None])       # (B,G,Hg,Q,Nk)
  delta = (o.astype(jnp.float32) * do.astype(jnp.float32)).sum(axis=-1)
  dp = jnp.einsum("bhqd,bhkd->bhqk", do, v, preferred_element_type=jnp.float32)
  ds = p * (dp.reshape(p.shape) - delta.reshape(p.shape[:-1])[..., None])
  ds_h = ds.reshape(b, h, n_q, -1)
  dv = jnp.einsum("bhqk,bhqd->bhkd", p.reshape(ds_h.shape).astype(do.dtype), do,
                  preferred_element_type=jnp.float32)
  dq = jnp.einsum("bhqk,bhkd->bhqd", ds_h, k.astype(jnp.float32)) * d ** -0.5
  dk = jnp.einsum("bhqk,bhqd->bhkd", ds_h, q.astype(jnp.float32)) * d ** -0.5
  w = w2.astype(jnp.float32).reshape(hidden, groups, h // groups)
  dhq, dhk, dw2 = [], [], []
  for j, part in enumerate(parts):
    g = jnp.where(part > 0, ds, 0.0) * w[j][None, :, :, None, None]          # d part_j
    dhq.append(g.sum(axis=(1, 2, 4)))                                        # (B, Q)
    dhk.append(-g.sum(axis=(2, 3)))                                          # (B, G, Nk)
    dw2.append((ds * part).sum(axis=(0, 3, 4)).reshape(h))                  # (H,)
  return (dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype),
          jnp.stack(dhq, -1).astype(hq.dtype), jnp.stack(dhk, -1).astype(hk.dtype),
          jnp.stack(dw2, 0).astype(w2.dtype))


# -- the op ------------------------------------------------------------------------------------

def _dispatch(fn, static):
  """``fn(variant_or_None)`` for the platform the program is lowered for (``None``: the XLA
  form), or for the one variant ``static`` forces."""
  block_q, block_k, implementation, force = static
  if force is not None:
    return fn(None if force == "xla" else _variant(force, block_q, block_k))
  cpu = (lambda: fn(_variant("interpret", block_q, block_k))) if implementation == "pallas" \
      else (lambda: fn(None))
  gpu = lambda: fn(_variant("gpu", block_q, block_k))
  tpu = lambda: fn(_variant("tpu", block_q, block_k))
  return jax.lax.platform_dependent(cpu=cpu, cuda=gpu, rocm=gpu, tpu=tpu, default=cpu)


def _forward(q, k, v, hq, hk, w2, static):
  return _dispatch(lambda var: _xla_forward(q, k, v, hq, hk, w2) if var is None
                   else _kernel_forward(var, q, k, v, hq, hk, w2), static)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _attention(q, k, v, hq, hk, w2, static):
  return _forward(q, k, v, hq, hk, w2, static)[0]


def _attention_fwd(q, k, v, hq, hk, w2, static):
  o, lse = _forward(q, k, v, hq, hk, w2, static)
  return o, (q, k, v, hq, hk, w2, o, lse)


def _attention_bwd(static, res, do):
  q, k, v, hq, hk, w2, o, lse = res
  do = do.astype(q.dtype)
  grads = _dispatch(lambda var: _xla_backward(*res, do) if var is None
                    else _kernel_backward(var, *res, do), static)
  return tuple(g.astype(x.dtype) for g, x in zip(grads, res[:6]))


_attention.defvjp(_attention_fwd, _attention_bwd)


def deformable_attention(q, k, v, query_hidden, key_hidden, w2, *, block_q: int = 64,
                         block_k: int = 64, implementation: str = "pallas",
                         variant: Optional[str] = None):
  """``softmax(q k^T / sqrt(D) + bias) v`` without storing the ``(Q, Nk)`` bias or weights.

  ``q (B, H, Q, D)``; ``k, v (B, H, Nk, D)``; ``query_hidden (B, Q, hidden)`` the position MLP's
  first layer on the query positions (``W1 q + b1``); ``key_hidden (B, G, Nk, hidden)`` on the
  key positions of each of ``G`` groups (``W1 p``; head ``h`` uses group ``h // (H / G)``);
  ``w2 (hidden, H)`` the second layer's weight per head. Returns ``(B, H, Q, D)`` in ``q``'s
  dtype; the logits and the softmax are float32. Differentiable in every array argument
  (custom VJP that recomputes; residuals: the inputs, the output, the log-sum-exp).

  ``implementation``: ``"pallas"``, the kernel on every platform (Pallas interpret mode on CPU);
  ``"auto"``, the kernel on GPU and TPU and the same function in XLA ops on CPU. The platform is
  the one the program is lowered for. ``block_q``, ``block_k``: the GPU (and interpret) tiles;
  the TPU tiles are 128. ``variant`` forces one form on every platform (tests, benchmarks):
  ``"interpret"`` (the GPU shapes interpreted), ``"tpu_interpret"`` (the TPU shapes
  interpreted), ``"gpu"``, ``"tpu"``, ``"xla"``. Sequences are padded to the tile lengths
  (padded keys masked, padded queries dropped).
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
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"deformable_attention: implementation must be one of {IMPLEMENTATIONS}, "
                     f"got {implementation!r}")
  if variant is not None and variant not in VARIANTS:
    raise ValueError(f"deformable_attention: variant must be one of {VARIANTS}, got {variant!r}")
  static = (block_q, block_k, implementation, variant)
  return _per_device(lambda *a: _attention(*a, static),
                     (q, k, v, query_hidden, key_hidden, w2))


def _per_device(fn, args):
  """``fn(*args)`` on each device's part of the batch when a multi-device mesh is in context
  (``jax.set_mesh``, or the ``Trainer``'s steps): a Pallas kernel is one device's program, which
  XLA's partitioner cannot split (Mosaic refuses; a GPU custom call would be gathered and
  replicated), so ``shard_map`` hands each device its own examples. ``w2`` is replicated."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return fn(*args)
  batch = args[0].shape[0]
  if batch % mesh.size:
    raise ValueError(f"deformable_attention: batch {batch} is not divisible by the {mesh.size} "
                     f"devices of the mesh {dict(mesh.shape)}; the fused kernel runs on each "
                     "device's own examples")
  rows = P(mesh.axis_names)
  return jax.shard_map(fn, mesh=mesh, in_specs=(rows,) * 5 + (P(),), out_specs=rows,
                       check_vma=False)(*args)


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
