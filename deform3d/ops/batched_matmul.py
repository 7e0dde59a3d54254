"""Batched matmuls of small matrices with a backward pass XLA:CPU runs fast.

Attention inside joint groups and temporal windows multiplies thousands of 4x4 to 5x5 score
matrices with ``(L, head_dim)`` blocks. Autodiff's backward of ``bqd,bkd->bqk`` and
``bqk,bkd->bqd`` contains the contraction ``bqk,bqd->bkd`` (over the *rows* of both operands).
XLA:CPU lowers that form with the transposition folded into the dot, and for small matrices
that dot is about 10x slower than the same product on an explicitly transposed operand
(docs/performance.md has the measurements). The custom VJPs here form the same products with
the transposition materialized; the optimization barrier keeps XLA from folding it back.

Both functions equal their ``jnp.einsum`` (values and gradients; ``tests/test_layers.py``). The
products accumulate in float32 (``preferred_element_type``); gradients come back in the
operands' dtypes, with the incoming cotangent cast to the operands' dtype first (bfloat16
operands get bfloat16 backward matmuls with float32 accumulation).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _transposed(x):
  """``x`` with its last two axes swapped, materialized (see the module docstring)."""
  return jax.lax.optimization_barrier(jnp.swapaxes(x, -1, -2))


def _rows_contracted(x, y, dtype):
  """``einsum("bqk,bqd->bkd", x, y)`` computed as ``x^T @ y`` on a transposed copy of x."""
  return jnp.einsum("bkq,bqd->bkd", _transposed(x), y,
                    preferred_element_type=jnp.float32).astype(dtype)


@jax.custom_vjp
def matmul_nt(a, b):
  """``einsum("bqd,bkd->bqk", a, b)`` (e.g. attention logits ``q k^T``), float32 result."""
  return jnp.einsum("bqd,bkd->bqk", a, b, preferred_element_type=jnp.float32)


def _nt_fwd(a, b):
  return matmul_nt(a, b), (a, b)


def _nt_bwd(res, g):
  a, b = res
  g = g.astype(a.dtype)
  da = jnp.einsum("bqk,bkd->bqd", g, b, preferred_element_type=jnp.float32).astype(a.dtype)
  return da, _rows_contracted(g, a, b.dtype)


matmul_nt.defvjp(_nt_fwd, _nt_bwd)


@jax.custom_vjp
def matmul_nn(a, b):
  """``einsum("bqk,bkd->bqd", a, b)`` (e.g. attention weights times values), in ``b.dtype``."""
  return jnp.einsum("bqk,bkd->bqd", a, b, preferred_element_type=jnp.float32).astype(b.dtype)


def _nn_fwd(a, b):
  return matmul_nn(a, b), (a, b)


def _nn_bwd(res, g):
  a, b = res
  g = g.astype(b.dtype)
  da = jnp.einsum("bqd,bkd->bqk", g, b, preferred_element_type=jnp.float32).astype(a.dtype)
  return da, _rows_contracted(a.astype(b.dtype), g, b.dtype)


matmul_nn.defvjp(_nn_fwd, _nn_bwd)
