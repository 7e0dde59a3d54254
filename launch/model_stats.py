"""Model size, FLOPs and peak memory from XLA's own analyses (no timing, runs on any backend).

``python launch/model_stats.py [--configs embedded ntu:split=xsub60] [--batch 8] [--out stats.json]``

For the model of each config, in both block designs (``paper``, the default, and ``pooled``,
the earlier one):

* parameters: the count of the initialized tree;
* forward FLOPs per clip: ``cost_analysis()["flops"]`` of the compiled eval forward at batch 1;
* peak memory of one training step (forward + backward, all parameter gradients) at ``--batch``
  clips, with and without ``model.remat``: the compiled step's ``memory_analysis()``
  (arguments + outputs + temporaries - aliased bytes), as XLA plans it for this backend.

The model settings come from the config files; the paper-scale configs compute in bfloat16
(their ``model.dtype``). Needs no TensorFlow.

The same model's bytes and FLOPs per module (a benchmark, not installed with the package):
``python -m benchmarks.traffic`` from the repository root (``benchmarks/traffic.py``).
"""
import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax

from configs.common import clip_shapes, load
from deform3d.models import build_model


def _inputs(config, batch):
  """Abstract inputs of the config's data (``configs.common.clip_shapes``)."""
  shapes = clip_shapes(config)
  return tuple(jax.ShapeDtypeStruct((batch,) + shapes[k], jnp.float32)
               for k in ("frames", "keypoints"))


def model_stats(config_name: str, design: str, batch: int) -> dict:
  config = load(config_name)
  row = {"config": config_name, "design": design, "dtype": config.model.dtype, "batch": batch}
  model = build_model({**config.model, "design": design, "drop_path": 0.0, "dropout": 0.0})
  frames, keypoints = _inputs(config, 1)
  params = jax.eval_shape(model.init, jax.random.key(0), frames, keypoints)["params"]
  row["params"] = int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))
  fwd = jax.jit(lambda p, f, k: model.apply({"params": p}, f, k)).lower(params, frames, keypoints)
  cost = fwd.compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  row["gflops_per_clip"] = float(cost["flops"]) / 1e9
  frames, keypoints = _inputs(config, batch)
  labels = jax.ShapeDtypeStruct((batch,), jnp.int32)
  for remat in (False, True):
    m = build_model({**config.model, "design": design, "remat": remat, "drop_path": 0.0,
                     "dropout": 0.0})

    def loss(p, f, k, y, m=m):
      return optax.softmax_cross_entropy_with_integer_labels(m.apply({"params": p}, f, k), y).mean()

    mem = jax.jit(jax.grad(loss)).lower(params, frames, keypoints, labels).compile().memory_analysis()
    peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
            - mem.alias_size_in_bytes)
    row["peak_mib_remat" if remat else "peak_mib"] = peak / 2**20
    row["temp_mib_remat" if remat else "temp_mib"] = mem.temp_size_in_bytes / 2**20
  return row


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--configs", nargs="+", default=["embedded", "ntu:split=xsub60"],
                      help="NAME[:ARG] of configs/NAME.py, e.g. ntu:split=xsub60,pose=kinect")
  parser.add_argument("--designs", default="paper,pooled")
  parser.add_argument("--batch", type=int, default=8, help="clips per training step for memory")
  parser.add_argument("--out", default=None)
  args = parser.parse_args()
  rows = []
  print(f"backend: {jax.default_backend()} ({jax.devices()[0].device_kind}), jax {jax.__version__}")
  print("| config | design | dtype | params | GFLOPs/clip (fwd) | step peak MiB "
        f"(B={args.batch}) | with remat |")
  print("| --- | --- | --- | --- | --- | --- | --- |")
  for name in args.configs:
    for design in args.designs.split(","):
      r = model_stats(name, design, args.batch)
      rows.append(r)
      print(f"| {name} | {design} | {r['dtype']} | {r['params']:,} | {r['gflops_per_clip']:.2f} "
            f"| {r['peak_mib']:.0f} | {r['peak_mib_remat']:.0f} |", flush=True)
  if args.out:
    with open(args.out, "w") as fh:
      json.dump({"backend": jax.default_backend(), "jax": jax.__version__, "rows": rows}, fh,
                indent=1)


if __name__ == "__main__":
  main()
