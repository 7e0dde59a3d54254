"""The joint stride attention's core two ways, checked equal and timed side by side.

``python launch/joint_layouts.py [--stride 1] [--batch 32] [--repeats 30]``

* ``grouped`` (the model's, ``fast.JointGroupLayout``): every group of ``w`` joints, joined by
  the cross token, is its own ``(1 + w) x (1 + w)`` attention: ``B * T * Ng * heads`` tiny
  products.
* ``masked`` (issue 17's "one masked attention per frame"): per frame, the ``Ng`` copies of the
  cross token's query (one per group) and all ``P * J`` joint queries attend over the cross
  token and all joints, with a mask that keeps each query to its group: ``B * T * heads``
  products of ``(Ng + P * J) x (1 + P * J)``. Exactly the same function (masked keys get zero
  weight; the cross token's output is the group mean of its ``Ng`` rows).

Both take the projected queries, keys and values ``(B, T, 1 + P * J, heads, head_dim)`` of the
embedded config (17 joints x 2 persons, window 4, 4 heads of 16) and one absent second person
in every third clip; the step is the value and the gradients of a random linear function of the
output. Prints the largest relative difference of value and gradients, XLA's op count and
temporary memory, and min/median/max ms of the two compiled steps, alternated. Needs no
TensorFlow. docs/performance.md has the numbers.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from deform3d.models.fast import JointGroupLayout  # noqa: E402
from deform3d.models.layers import NEG_INF  # noqa: E402
from deform3d.models.stride_attention import group_mean, person_groups  # noqa: E402
from deform3d.ops.batched_matmul import matmul_nn, matmul_nt  # noqa: E402


def _groups(present, joints, window, stride):
  """The groups' index table ``(Ng, w)`` (``person_groups``) and, from ``present (B, P)``, the
  groups' weights in the cross token's mean and their persons' presence ``(B, Ng)``, as
  ``JointStrideAttention`` computes them."""
  persons = present.shape[1]
  idx = person_groups(joints, window, stride, persons)
  gp = present[:, np.repeat(np.arange(persons), idx.shape[0] // persons)]
  return idx, gp | ~gp.any(axis=1, keepdims=True), gp


def grouped(q, k, v, present, joints, window, stride):
  """The model's form: one small attention per group (``JointGroupLayout``)."""
  b, t, _, h, d = q.shape
  idx, weights, gp = _groups(present, joints, window, stride)
  ng = idx.shape[0]
  layout = JointGroupLayout(joints, window, stride, present.shape[1], weights)
  valid = np.concatenate([np.ones((ng, 1), bool), idx >= 0], axis=1)
  keys = jnp.concatenate([jnp.ones_like(gp[..., None]),
                          jnp.broadcast_to(gp[..., None], gp.shape + (window,))], axis=-1)
  mask = (valid & keys)[:, None, :, None, None, :]                    # (B, 1, Ng, 1, 1, 1+w)
  heads_first = lambda x: jnp.moveaxis(x, -2, -3).reshape(-1, 1 + window, d)
  qs, ks, vs = (heads_first(layout.split(x)) for x in (q, k, v))
  logits = (matmul_nt(qs, ks) * d ** -0.5).reshape(b, t, ng, h, 1 + window, 1 + window)
  att = jax.nn.softmax(jnp.where(mask, logits, NEG_INF), axis=-1)
  out = matmul_nn(att.reshape(-1, 1 + window, 1 + window), vs)
  return layout.merge(jnp.moveaxis(out.reshape(b, t, ng, h, 1 + window, d), 3, 4))


def masked(q, k, v, present, joints, window, stride):
  """One masked attention per frame over the cross token and all joints (module docstring)."""
  b, t, n, h, d = q.shape
  idx, weights, _ = _groups(present, joints, window, stride)
  ng = idx.shape[0]
  group_of = np.full(n - 1, -1)
  g_i, s_i = np.nonzero(idx >= 0)
  group_of[idx[g_i, s_i]] = g_i
  q_group = np.concatenate([np.arange(ng), group_of])                 # (Ng + PJ,)
  k_group = np.concatenate([[-2], group_of])                          # the cross key: any group
  static = (k_group[None] == -2) | (q_group[:, None] == k_group[None])
  key_present = jnp.concatenate([jnp.ones((b, 1), bool), jnp.repeat(present, joints, axis=1)], 1)
  mask = (static[None] & key_present[:, None])[:, None, None]         # (B, 1, 1, Q, K)
  queries = jnp.concatenate([jnp.broadcast_to(q[:, :, :1], (b, t, ng, h, d)), q[:, :, 1:]], 2)
  lq = ng + n - 1
  logits = matmul_nt(jnp.moveaxis(queries, 3, 2).reshape(-1, lq, d),
                     jnp.moveaxis(k, 3, 2).reshape(-1, n, d)) * d ** -0.5
  att = jax.nn.softmax(jnp.where(mask, logits.reshape(b, t, h, lq, n), NEG_INF), axis=-1)
  out = matmul_nn(att.reshape(-1, lq, n), jnp.moveaxis(v, 3, 2).reshape(-1, n, d))
  out = jnp.moveaxis(out.reshape(b, t, h, lq, d), 2, 3)               # (B, T, Q, H, D)
  return jnp.concatenate([group_mean(out[:, :, :ng], weights), out[:, :, ng:]], axis=2)


FORMS = {"grouped": grouped, "masked": masked}


def compare(batch=32, frames=8, persons=2, joints=17, heads=4, head_dim=16, window=4, stride=1,
            repeats=30, log=print):
  """Equality and alternated timings of ``FORMS`` (module docstring); returns the rows."""
  from benchmark import _paired_times, xla_stats
  rng = np.random.default_rng(0)
  shape = (batch, frames, 1 + persons * joints, heads, head_dim)
  q, k, v, cot = (jnp.asarray(rng.standard_normal(shape), jnp.float32) for _ in range(4))
  present = np.ones((batch, persons), bool)
  present[::3, 1:] = False
  present = jnp.asarray(present)

  def step(form):
    loss = lambda q, k, v: (form(q, k, v, present, joints, window, stride) * cot).sum()
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2))).lower(q, k, v).compile()

  compiled = {name: step(form) for name, form in FORMS.items()}
  ref = jax.device_get(compiled["grouped"](q, k, v))
  rows = []
  for name, c in compiled.items():
    out = jax.device_get(c(q, k, v))
    err = max(float(np.abs(a - r).max() / np.abs(r).max())
              for a, r in zip(jax.tree.leaves(out), jax.tree.leaves(ref)))
    rows.append(dict(form=name, max_rel_diff_vs_grouped=err, stride=stride, batch=batch,
                     **xla_stats(c)))
  spread = []
  medians = _paired_times([lambda c=c: jax.block_until_ready(c(q, k, v))
                           for c in compiled.values()], repeats, pause_s=0.0, spread=spread)
  for row, med, (lo, hi) in zip(rows, medians, spread):
    row.update(ms=1e3 * med, ms_min_max=[1e3 * lo, 1e3 * hi])
    log(f"stride {stride} {row['form']:8s} fwd+bwd {row['ms']:7.2f} ms ({1e3 * lo:.2f}-"
        f"{1e3 * hi:.2f})  {row['xla_ops']} ops  temp {row['xla_temp_mb']:.1f} MB  max rel "
        f"diff vs grouped {row['max_rel_diff_vs_grouped']:.1e}")
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--stride", type=int, default=1)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--repeats", type=int, default=30)
  args = parser.parse_args()
  print(f"# jax {jax.__version__}, {jax.devices()[0].device_kind}, "
        f"{len(os.sched_getaffinity(0))} threads, GLIBC_TUNABLES="
        f"{os.environ.get('GLIBC_TUNABLES', '')}")
  compare(batch=args.batch, stride=args.stride, repeats=args.repeats)


if __name__ == "__main__":
  main()
