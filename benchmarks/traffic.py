"""Memory traffic and arithmetic per module, from XLA's cost analysis.

``python -m benchmarks.traffic [--configs embedded ntu:split=xsub60] [--batch 8] [--out F]`` from
the repository root: per module of block 0 (the largest block) of each config's model, forward +
backward FLOPs and bytes accessed, FLOP per byte and the H100/H200 floors, and the deformable
attention's core against the fused kernel's bytes by construction, e.g. ``python -m
benchmarks.traffic --configs ntu:split=xsub60 --batch 2 --out traffic.json``.

Each module call of one block (read from the model itself: ``nn.intercept_methods`` under
``jax.eval_shape`` records the shapes it is called with) is compiled alone, forward and backward
(the VJP of a random cotangent with respect to its parameters and floating-point inputs), and
``cost_analysis()`` gives its FLOPs and bytes accessed as XLA counts them for the backend it
compiles for. The floor of a module on an accelerator is ``max(FLOPs / peak rate, bytes /
bandwidth)``. XLA fuses differently per backend, so CPU counts are a proxy for a GPU's.

The attention core of the deformable attention (position bias, logits, softmax, value product)
is also set against the fused kernel (``ops/fused_attention.py``) whose bytes are counted by
construction: each input read once and each output written once per kernel.
"""
from __future__ import annotations

import argparse
import dataclasses
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

# Vendor figures (dense bfloat16 tensor-core rate, HBM bandwidth) for the floors.
DEVICES = {"H100 SXM": (989e12, 3.35e12), "H200": (989e12, 4.8e12)}

# (module path below the block, method): what the table lists for one block.
BLOCK_PARTS = (((), "__call__", "whole block"),
               (("cross_attn",), "__call__", "3D deformable attention (all)"),
               (("cross_attn",), "attend_keys", "  its position bias + attention"),
               (("rgb_mlp",), "__call__", "RGB MLP"),
               ((), "pose_layers", "joint stride attention (+ norm, residual)"),
               ((), "temporal_layers", "temporal attention, merge, MLP"))


def _abstract(x):
  if isinstance(x, jax.Array) or hasattr(x, "aval"):
    return jax.ShapeDtypeStruct(x.shape, x.dtype)
  return x


def module_calls(model, frames, keypoints, prefix=("block0",)):
  """``{(path, method): (module, args, kwargs)}`` of every call under ``prefix`` made while the
  model initializes on the abstract ``frames`` and ``keypoints`` (the first call of each)."""
  calls = {}

  def record(next_fun, args, kwargs, context):
    path = tuple(context.module.path)
    if path[:len(prefix)] == prefix:
      key = (path[len(prefix):], context.method_name)
      if key not in calls:
        calls[key] = (context.module.clone(parent=None), jax.tree.map(_abstract, args),
                      jax.tree.map(_abstract, kwargs))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    jax.eval_shape(model.init, jax.random.key(0), frames, keypoints)
  return calls


def _floating(x):
  return isinstance(x, jax.ShapeDtypeStruct) and jnp.issubdtype(x.dtype, jnp.floating)


def _cost(fn, *args):
  compiled = jax.jit(fn).lower(*args).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return {"gflop": float(cost.get("flops", 0.0)) / 1e9,
          "gb": float(cost.get("bytes accessed", 0.0)) / 1e9}


def _as_call(module, method):
  """``module`` itself for ``__call__``; otherwise a subclass whose compact ``__call__`` runs
  ``method`` (a method that defines submodules runs only inside a compact method)."""
  if method == "__call__":
    return module
  cls = type(module)
  run = nn.compact(lambda self, *a, **k: getattr(self, method)(*a, **k))
  sub = type(f"{cls.__name__}_{method}", (cls,), {"__call__": run})
  fields = {f.name: getattr(module, f.name) for f in dataclasses.fields(module)
            if f.init and f.name not in ("parent", "name")}
  return sub(**fields)


def call_cost(module, method, args, kwargs):
  """FLOPs and bytes of the call's forward + backward pass (as compiled for this backend)."""
  module, method = _as_call(module, method), "__call__"
  kwargs = {k: v for k, v in kwargs.items() if not isinstance(v, jax.ShapeDtypeStruct)}
  arrays = [i for i, a in enumerate(args) if isinstance(a, jax.ShapeDtypeStruct)]
  slots = [i for i in arrays if _floating(args[i])]

  def fill(xs, which):
    full = list(args)
    for i, x in zip(which, xs):
      full[i] = x
    return full

  variables = jax.eval_shape(
      lambda key, xs: module.init(key, *fill(xs, arrays), method=method, **kwargs),
      jax.random.key(0), [args[i] for i in arrays])

  def apply(v, xs):
    full = fill(xs, slots)
    for i in arrays:  # integer and boolean inputs (masks): zeros of their shape
      if i not in slots:
        full[i] = jnp.zeros(args[i].shape, args[i].dtype)
    out = module.apply(v, *full, method=method, **kwargs)
    return [o for o in jax.tree.leaves(out) if jnp.issubdtype(o.dtype, jnp.floating)]

  outs = jax.eval_shape(apply, variables, [args[i] for i in slots])

  def fwd_bwd(v, xs, cots):
    out, vjp = jax.vjp(apply, v, xs)
    return out, vjp(cots)

  return _cost(fwd_bwd, variables, [args[i] for i in slots], outs)


def core_sizes(q_shape, n_k, groups, hidden=8):
  """Shapes of the attention core's inputs ``q, k, v, query_hidden, key_hidden, w2`` for
  ``q (B, H, Q, D)`` and ``n_k`` keys in ``groups``."""
  b, h, n_q, d = q_shape
  return ((b, h, n_q, d), (b, h, n_k, d), (b, h, n_k, d), (b, n_q, hidden),
          (b, groups, n_k, hidden), (hidden, h))


def core_cost_xla(q_shape, n_k, groups, dtype, bias_dtype=jnp.float32):
  """The materialized core (``fused_attention.reference``: bias, logits and weights stored,
  the bias rounded to ``bias_dtype``), forward + backward, by XLA's cost analysis."""
  from deform3d.ops import fused_attention
  shapes = core_sizes(q_shape, n_k, groups)
  dtypes = (dtype, dtype, dtype, jnp.float32, jnp.float32, jnp.float32)
  args = [jax.ShapeDtypeStruct(s, t) for s, t in zip(shapes, dtypes)]

  def fwd_bwd(*a):
    out, vjp = jax.vjp(lambda *x: fused_attention.reference(*x, bias_dtype=bias_dtype), *a)
    return vjp(out)
  return _cost(fwd_bwd, *args)


def core_bytes_fused(q_shape, n_k, groups, dtype, block_q=64, block_k=64, hidden=8):
  """Bytes of the fused kernels by construction, forward + backward: every kernel's inputs read
  once and outputs written once (``unique``), and with each program's re-reads of the arrays it
  reads whole (keys per query tile, queries per key tile; ``tiles``: an upper bound that an L2
  cache shrinks). Padded lengths as the kernels use them."""
  b, h, n_q, d = q_shape
  e = jnp.dtype(dtype).itemsize
  bq = min(block_q, max(16, 1 << (n_q - 1).bit_length()))
  bk = min(block_k, max(16, 1 << (n_k - 1).bit_length()))
  nq, nk = -(-n_q // bq) * bq, -(-n_k // bk) * bk
  qb, kb = b * h * nq * d * e, b * h * nk * d * e                 # q (or o, do, dq); k (or v)
  hq, hk, w2 = b * hidden * nq * 4, b * groups * hidden * nk * 4, h * hidden * 4
  row = b * h * nq * 4                                            # lse, delta
  fwd = qb + 2 * kb + hq + hk + w2 + qb + row
  delta = 2 * qb + row
  inputs = qb + 2 * kb + hq + hk + w2 + qb + 2 * row
  dq = inputs + qb + b * h * hidden * nq * 4
  dkv = inputs + 2 * kb + b * h * hidden * nk * 4 + b * h * (nk // bk) * hidden * 4
  unique = fwd + delta + dq + dkv
  # Re-reads: the forward and dq kernels read k, v and hk once per query tile; the dkv kernel
  # reads q, do, hq, lse and delta once per key tile.
  rereads = (2 * (nq // bq - 1) * (2 * kb + b * h * hidden * nk * 4)
             + (nk // bk - 1) * (2 * qb + b * h * hidden * nq * 4 + 2 * row))
  return {"gb_unique": unique / 1e9, "gb_tiles": (unique + rereads) / 1e9}


def floors(gflop, gb):
  """Milliseconds at each of ``DEVICES``' peak rate and bandwidth, and which bound."""
  out = {}
  for name, (rate, bw) in DEVICES.items():
    compute, memory = gflop * 1e9 / rate * 1e3, gb * 1e9 / bw * 1e3
    out[name] = {"ms": max(compute, memory), "bound": "memory" if memory > compute else "compute"}
  return out


def traffic_table(model, frames, keypoints, log=print):
  """Rows for block 0 of ``model`` on the abstract inputs, plus the attention core in both
  forms. Each row: name, GFLOP, GB accessed, FLOP per byte, floors."""
  calls = module_calls(model, frames, keypoints)
  rows = []
  for sub, method, label in BLOCK_PARTS:
    if (sub, method) not in calls:
      continue
    module, args, kwargs = calls[(sub, method)]
    cost = call_cost(module, method, args, kwargs)
    rows.append({"module": label, "path": "/".join(("block0",) + sub), "method": method, **cost})
    log(_line(rows[-1]))
  attend = calls.get((("cross_attn",), "attend_keys"))
  if attend is not None:
    module, (queries, query_pos, keys, key_pos, *_), _ = attend
    b, n_q, c = queries.shape
    shape = (b, module.num_heads, n_q, c // module.num_heads)
    n_k, groups = keys.shape[1], key_pos.shape[1]
    xla = core_cost_xla(shape, n_k, groups, module.dtype)
    rows.append({"module": "attention core, XLA (bias, logits, weights stored)",
                 "path": "ops.fused_attention.reference", "method": "-", **xla})
    log(_line(rows[-1]))
    if module.dtype != jnp.float32:  # an XLA-only cut: the bias stored in the compute dtype
      rows.append({"module": f"attention core, XLA, bias in {jnp.dtype(module.dtype).name}",
                   "path": "ops.fused_attention.reference", "method": "-",
                   **core_cost_xla(shape, n_k, groups, module.dtype, module.dtype)})
      log(_line(rows[-1]))
    fused = core_bytes_fused(shape, n_k, groups, module.dtype)
    # The backward kernels each recompute the logits and the bias (2 Q Nk D + 3 hidden Q Nk
    # per head).
    recompute = 2 * shape[0] * shape[1] * n_q * n_k * (2 * shape[3] + 3 * 8) / 1e9
    for key, what in (("gb_unique", "each array once"), ("gb_tiles", "with tile re-reads")):
      rows.append({"module": f"attention core, fused kernel ({what})",
                   "path": "ops.fused_attention", "method": "-",
                   "gflop": xla["gflop"] + recompute,
                   "gb": fused[key], "by_construction": True})
      log(_line(rows[-1]))
  for r in rows:
    r["flop_per_byte"] = r["gflop"] / r["gb"] if r["gb"] else float("nan")
    r["floors"] = floors(r["gflop"], r["gb"])
  return rows


def _line(r):
  fl = floors(r["gflop"], r["gb"])
  return (f"| {r['module']} | {r['gflop']:.2f} | {r['gb']:.3f} | "
          f"{r['gflop'] / r['gb'] if r['gb'] else float('nan'):.1f} | "
          + " | ".join(f"{v['ms']:.3f} ({v['bound']})" for v in fl.values()) + " |")


def header():
  return ("| module (block 0, fwd + bwd) | GFLOP | GB accessed | FLOP/byte | "
          + " | ".join(f"{d} floor ms" for d in DEVICES) + " |\n"
          + "| --- " * (4 + len(DEVICES)) + "|")


def main():
  from configs.common import clip_shapes, load
  from deform3d.models import build_model

  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--configs", nargs="+", default=["embedded", "ntu:split=xsub60"],
                      help="NAME[:ARG] of configs/NAME.py, e.g. ntu:split=xsub60,pose=kinect")
  parser.add_argument("--batch", type=int, default=8, help="clips of the compiled calls")
  parser.add_argument("--out", default=None)
  args = parser.parse_args()
  out = {"backend": jax.default_backend(), "jax": jax.__version__, "batch": args.batch,
         "devices": DEVICES, "configs": {}}
  for name in args.configs:
    config = load(name)
    model = build_model({**config.model, "drop_path": 0.0, "dropout": 0.0})
    shapes = clip_shapes(config)
    frames, keypoints = (jax.ShapeDtypeStruct((args.batch,) + shapes[k], jnp.float32)
                         for k in ("frames", "keypoints"))
    print(f"{name}, batch {args.batch}, {config.model.dtype}, backend {jax.default_backend()}")
    print(header())
    out["configs"][name] = traffic_table(model, frames, keypoints)
  if args.out:
    with open(args.out, "w") as fh:
      json.dump(out, fh, indent=1)


if __name__ == "__main__":
  main()
