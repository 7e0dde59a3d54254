"""Benchmarks, side by side in one run: ``python launch/benchmark.py [--out results.json]``.

Currently the trilinear sampler alone: forward and forward+backward step time of
``grid_sample_3d`` with each ``backward`` variant (autodiff scatter-add, one-hot matmul, sorted
segment sum) next to ``torch.nn.functional.grid_sample`` on the same shapes (when torch is
installed), plus JAX compile times. Ratios within one run are the meaningful numbers on CPU;
absolute times only on an accelerator. Needs no TensorFlow.
"""
import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from deform3d.ops import grid_sample_3d  # noqa: E402

# (name, N, D, H, W, C, points per item): the model's default use (batch 32 x 2 groups, 8x6x6
# volume, 4x3x3 points) and a paper-scale layer (batch 8 x 2 groups, 16x28x28, 8x7x7 points).
SIZES = [("embedded-default", 64, 8, 6, 6, 32, 36), ("paper-scale", 16, 16, 28, 28, 64, 392)]


def timeit(fn, *args, repeats):
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return float(np.median(times))


def bench_sampler(repeats):
  rows = []
  for name, n, d, h, w, c, p in SIZES:
    rng = np.random.default_rng(0)
    vol = jnp.asarray(rng.standard_normal((n, d, h, w, c)), jnp.float32)
    grid = jnp.asarray(rng.uniform(-1, 1, (n, p, 3)), jnp.float32)
    for mode in ("autodiff", "onehot", "sorted"):
      fwd = jax.jit(lambda v, g, m=mode: grid_sample_3d(v, g, backward=m))
      step = jax.jit(jax.grad(lambda v, g, m=mode: jnp.sum(grid_sample_3d(v, g, backward=m) ** 2),
                              argnums=(0, 1)))
      t = time.perf_counter()
      step.lower(vol, grid).compile()
      compile_s = time.perf_counter() - t
      rows.append({"size": name, "impl": f"jax/{mode}", "fwd_ms": 1e3 * timeit(fwd, vol, grid,
                                                                               repeats=repeats),
                   "fwd_bwd_ms": 1e3 * timeit(step, vol, grid, repeats=repeats),
                   "compile_s": compile_s})
    try:
      import torch
    except ImportError:
      continue
    vt = torch.tensor(np.asarray(vol)).permute(0, 4, 1, 2, 3).contiguous().requires_grad_(True)
    gt = torch.tensor(np.asarray(grid)).reshape(n, p, 1, 1, 3).requires_grad_(True)
    sample = lambda: torch.nn.functional.grid_sample(vt, gt, align_corners=False)

    def torch_time(fn):
      fn()
      times = []
      for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
      return float(np.median(times))

    def fwd_bwd():
      vt.grad = gt.grad = None
      (sample() ** 2).sum().backward()

    with torch.no_grad():
      t_fwd = torch_time(sample)
    rows.append({"size": name, "impl": "torch/grid_sample", "fwd_ms": 1e3 * t_fwd,
                 "fwd_bwd_ms": 1e3 * torch_time(fwd_bwd), "compile_s": 0.0})
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=20)
  parser.add_argument("--out", default=None, help="write the rows and device info as JSON")
  args = parser.parse_args()
  info = {"device": str(jax.devices()[0].device_kind), "platform": jax.devices()[0].platform,
          "jax": jax.__version__, "python": platform.python_version(),
          "cpu_count": os.cpu_count()}
  print(f"# {info}", flush=True)
  rows = bench_sampler(args.repeats)
  base = {r["size"]: r for r in rows if r["impl"] == "jax/autodiff"}
  print(f"{'size':18} {'impl':20} {'fwd ms':>9} {'fwd+bwd ms':>11} {'vs autodiff':>12} "
        f"{'compile s':>10}")
  for r in rows:
    ratio = r["fwd_bwd_ms"] / base[r["size"]]["fwd_bwd_ms"]
    r["fwd_bwd_vs_autodiff"] = ratio
    print(f"{r['size']:18} {r['impl']:20} {r['fwd_ms']:9.3f} {r['fwd_bwd_ms']:11.3f} "
          f"{ratio:11.2f}x {r['compile_s']:10.2f}", flush=True)
  if args.out:
    with open(args.out, "w") as fh:
      json.dump({"info": info, "sampler": rows}, fh, indent=1)


if __name__ == "__main__":
  main()
