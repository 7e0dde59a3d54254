"""Benchmarks, side by side in one run: ``python launch/benchmark.py [--out results.json]``.

Two suites (``--suite model|sampler|all``):

* ``model``: the full ``Deform3DTransformer``, forward (eval) and forward+backward (cross-entropy
  and all parameter gradients) at several sizes and dtypes, next to the PyTorch reference
  implementation of the same model (``launch/torch_reference.py``, loaded with the same
  parameters; ``tests/test_torch_reference.py`` checks equal logits and gradients). Reports
  step time, clips/s, JAX compile time, peak memory and the JAX-over-torch speedup.
* ``sampler``: ``grid_sample_3d`` alone with each ``backward`` variant (autodiff scatter-add,
  one-hot matmul, sorted segment sum) next to ``torch.nn.functional.grid_sample``.

Peak memory is, on CPU, the rise of the process's peak resident set over one step (Linux
``/proc/self/status`` VmHWM after resetting it), the same measure for both frameworks; on an
accelerator, JAX's ``peak_bytes_in_use`` (and torch.cuda's max allocated) after resetting.
Ratios within one run are the meaningful numbers on CPU; absolute times only on an
accelerator. Needs no TensorFlow; torch is optional (its rows are skipped without it).
"""
import argparse
import contextlib
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # torch_reference

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from deform3d.ops import grid_sample_3d  # noqa: E402

# (name, N, D, H, W, C, points per item): the model's default use (batch 32 x 2 groups, 8x6x6
# volume, 4x3x3 points) and a paper-scale layer (batch 8 x 2 groups, 16x28x28, 8x7x7 points).
SIZES = [("embedded-default", 64, 8, 6, 6, 32, 36), ("paper-scale", 16, 16, 28, 28, 64, 392)]


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
      time_jax = lambda fn: _median_time(lambda: jax.block_until_ready(fn(vol, grid)), repeats)
      rows.append({"size": name, "impl": f"jax/{mode}", "fwd_ms": 1e3 * time_jax(fwd),
                   "fwd_bwd_ms": 1e3 * time_jax(step), "compile_s": compile_s})
    try:
      import torch
    except ImportError:
      continue
    vt = torch.tensor(np.asarray(vol)).permute(0, 4, 1, 2, 3).contiguous().requires_grad_(True)
    gt = torch.tensor(np.asarray(grid)).reshape(n, p, 1, 1, 3).requires_grad_(True)
    sample = lambda: torch.nn.functional.grid_sample(vt, gt, align_corners=False)

    def fwd_bwd():
      vt.grad = gt.grad = None
      (sample() ** 2).sum().backward()

    with torch.no_grad():
      t_fwd = _median_time(sample, repeats)
    rows.append({"size": name, "impl": "torch/grid_sample", "fwd_ms": 1e3 * t_fwd,
                 "fwd_bwd_ms": 1e3 * _median_time(fwd_bwd, repeats), "compile_s": 0.0})
  return rows


# Full model: (name, config, overrides of config values, batch). The model, frame count, image
# size and joint layout come from the config (configs/), so no size is written here: "tiny" is
# the embedded config's small local variant, "embedded" the README's model, "medium" the same
# blocks twice as wide on 16 frames of 96 px, "paper" the paper datasets' model at a CPU batch.
MODEL_SIZES = [
    ("tiny", "embedded:variant=tiny", {}, 2),
    ("embedded", "embedded", {}, 32),
    ("medium", "embedded", {"model.variant": "medium", "num_frames": 16, "image_size": 96}, 8),
    ("paper", "ntu:split=xsub60", {}, 2),
]
DEFAULT_SIZES = ("embedded", "medium", "paper")
DTYPES = ("float32", "bfloat16")


def _proc_status(field):
  try:
    with open("/proc/self/status") as fh:
      for line in fh:
        if line.startswith(field + ":"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


def peak_memory(fn, device=None):
  """Bytes by which one call of ``fn`` raises the peak memory (see the module docstring)."""
  if device is not None and device.platform != "cpu":
    stats = device.memory_stats() or {}
    if "peak_bytes_in_use" in stats:
      before = stats.get("bytes_in_use", 0)
      fn()
      return device.memory_stats()["peak_bytes_in_use"] - before  # peak since start: upper bound
  try:
    with open("/proc/self/clear_refs", "w") as fh:
      fh.write("5")  # resets VmHWM to the current RSS
  except OSError:
    return None
  before = _proc_status("VmRSS")
  fn()
  peak = _proc_status("VmHWM")
  return None if before is None or peak is None else max(peak - before, 0)


def _median_time(fn, repeats):
  """Median seconds of one call of ``fn`` over ``repeats`` calls, after one warm-up call."""
  return _paired_times([fn], repeats, pause_s=0.0)[0]


def size_config(spec, overrides):
  """The config ``spec`` (``NAME[:ARG]``) with dotted ``overrides`` applied."""
  from configs.common import load
  config = load(spec)
  for key, value in overrides.items():
    *path, last = key.split(".")
    node = config
    for p in path:
      node = node[p]
    node[last] = value
  return config


def _model_inputs(model, batch, shapes, seed=0):
  rng = np.random.default_rng(seed)
  frames = rng.standard_normal((batch,) + shapes["frames"])
  keypoints = rng.uniform(-1, 1, (batch,) + shapes["keypoints"])
  keypoints[..., 2] = np.abs(keypoints[..., 2])
  labels = rng.integers(0, model.num_classes, batch)
  return frames.astype(np.float32), keypoints.astype(np.float32), labels


def _trim():
  """Returns freed heap pages to the OS (glibc), so the peak-RSS rise of the next step counts
  its own allocations rather than reusing memory freed by earlier ones."""
  try:
    import ctypes
    ctypes.CDLL("libc.so.6").malloc_trim(0)
  except (OSError, AttributeError):
    pass


def _build(config, dtype, batch):
  from configs.common import clip_shapes
  from deform3d.models import build_model
  # Dropout and drop path off: the two implementations then run the same computation.
  model = build_model({**config.model, "dtype": dtype, "drop_path": 0.0, "dropout": 0.0,
                       "attn_dropout": 0.0})
  frames, keypoints, labels = _model_inputs(model, batch, clip_shapes(config))
  params = jax.jit(model.init)(jax.random.key(0), frames[:1], keypoints[:1])["params"]
  label = (f"B={batch} T={config.num_frames} {config.image_size}px "
           f"C={model.embed_dim} L={model.depth} {dtype}")
  return model, params, (frames, keypoints, labels), label


def _jax_impl(model, params, data):
  """The jitted JAX forward and step as zero-argument callables, with compile times."""
  import optax
  frames, keypoints, labels = data

  def loss_fn(p, f, k, y):
    logits = model.apply({"params": p}, f, k, train=True)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  fwd = jax.jit(lambda p, f, k: model.apply({"params": p}, f, k))
  step = jax.jit(jax.value_and_grad(loss_fn))
  xs = [jax.device_put(x) for x in (frames, keypoints, labels)]
  t = time.perf_counter()
  compiled = step.lower(params, *xs).compile()
  compile_s = time.perf_counter() - t
  t = time.perf_counter()
  fwd_compiled = fwd.lower(params, *xs[:2]).compile()
  info = {"impl": "jax", "compile_s": compile_s, "compile_fwd_s": time.perf_counter() - t}
  try:
    info["xla_temp_mb"] = _mb(compiled.memory_analysis().temp_size_in_bytes)
  except Exception:  # not every backend reports it
    pass
  return (info, lambda: jax.block_until_ready(fwd_compiled(params, *xs[:2])),
          lambda: jax.block_until_ready(compiled(params, *xs)))


def _torch_impls(model, params, data, dtype, torch_compile):
  """The PyTorch reference's forward and step (eager, and optionally torch.compile)."""
  import torch
  import torch_reference
  frames, keypoints, labels = data
  cfg = torch_reference.model_fields(model)
  tp = torch_reference.params_from_flax(jax.device_get(params), requires_grad=True)
  tf_, tk, ty = torch.tensor(frames), torch.tensor(keypoints), torch.tensor(labels)
  autocast = ((lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if dtype == "bfloat16"
              else contextlib.nullcontext)
  variants = [("torch", torch_reference.forward)]
  if torch_compile:
    variants.append(("torch.compile", torch.compile(torch_reference.forward)))
  impls = []
  for impl, forward in variants:
    def t_fwd(forward=forward):
      with torch.no_grad(), autocast():
        forward(tp, tf_, tk, cfg)

    def t_step(forward=forward):
      for v in _leaves(tp):
        v.grad = None
      with autocast():
        loss = torch.nn.functional.cross_entropy(forward(tp, tf_, tk, cfg, train=True), ty)
      loss.backward()

    t = time.perf_counter()
    t_step()
    first_s = time.perf_counter() - t
    impls.append(({"impl": impl, "compile_s": first_s if impl == "torch.compile" else 0.0},
                  t_fwd, t_step))
  return impls


def _paired_times(fns, repeats, pause_s=0.05):
  """Median seconds of each callable, measured in alternation: repeat r times every callable
  once, in turn, so that all of them see the same state of a shared machine (on a busy 2-core
  VM a whole minute's drift would otherwise enter the ratios). The pause lets one framework's
  worker threads go idle before the other runs."""
  for fn in fns:
    fn()  # warm up
  times = [[] for _ in fns]
  for _ in range(repeats):
    for i, fn in enumerate(fns):
      if pause_s:
        time.sleep(pause_s)
      t = time.perf_counter()
      fn()
      times[i].append(time.perf_counter() - t)
  return [float(np.median(t)) for t in times]


def bench_model(repeats, sizes=None, dtypes=DTYPES, torch_compile=False, log=print):
  """Rows of the full-model suite (one per size x dtype x implementation). For each size and
  dtype the implementations' steps are timed in alternation (``_paired_times``), then their
  peak memory one at a time."""
  try:
    import torch  # noqa: F401
    import torch_reference  # noqa: F401
    with_torch = True
  except ImportError:
    with_torch = False
  rows = []
  for name, spec, overrides, batch in sizes or [s for s in MODEL_SIZES
                                                if s[0] in DEFAULT_SIZES]:
    config = size_config(spec, overrides)
    for dtype in dtypes:
      model, params, data, label = _build(config, dtype, batch)
      impls = [_jax_impl(model, params, data)]
      if with_torch:
        impls += _torch_impls(model, params, data, dtype, torch_compile)
      fwd_s = _paired_times([f for _, f, _ in impls], repeats)
      step_s = _paired_times([s for _, _, s in impls], repeats)
      new = []
      for (info, _, run_step), f, st in zip(impls, fwd_s, step_s):
        _trim()
        device = jax.devices()[0] if info["impl"] == "jax" else None
        row = dict(info, fwd_ms=1e3 * f, fwd_bwd_ms=1e3 * st,
                   peak_mem_mb=_mb(peak_memory(run_step, device)), size=name,
                   label=f"{name} {label}", dtype=dtype, batch=batch)
        new.append(row)
      base = new[0]
      for r in new:
        r["clips_per_s_fwd_bwd"] = r["batch"] / (r["fwd_bwd_ms"] / 1e3)
        r["fwd_bwd_speedup_of_jax"] = r["fwd_bwd_ms"] / base["fwd_bwd_ms"]
        r["fwd_speedup_of_jax"] = r["fwd_ms"] / base["fwd_ms"]
        rows.append(r)
        log(f"[{len(rows)}] " + _row_line(r))
  return rows


def _leaves(tree):
  if isinstance(tree, dict):
    for v in tree.values():
      yield from _leaves(v)
  else:
    yield tree


def _mb(n):
  return None if n is None else n / 2**20


def _row_line(r):
  mem = "-" if r.get("peak_mem_mb") is None else f"{r['peak_mem_mb']:.0f}"
  return (f"{r['label']:48} {r['impl']:14} fwd {r['fwd_ms']:9.2f} ms  fwd+bwd "
          f"{r['fwd_bwd_ms']:9.2f} ms  compile {r['compile_s']:6.1f} s  peak +{mem} MB")


def print_model_table(rows):
  print(f"\n{'model size / dtype':48} {'impl':14} {'fwd ms':>9} {'fwd+bwd ms':>11} "
        f"{'clips/s':>8} {'jax speedup':>12} {'compile s':>10} {'peak MB':>8}")
  print("(jax speedup = this row's time / jax's time, fwd+bwd; > 1 means jax is faster)")
  for r in rows:
    mem = "-" if r.get("peak_mem_mb") is None else f"{r['peak_mem_mb']:.0f}"
    print(f"{r['label']:48} {r['impl']:14} {r['fwd_ms']:9.2f} {r['fwd_bwd_ms']:11.2f} "
          f"{r['clips_per_s_fwd_bwd']:8.1f} {r['fwd_bwd_speedup_of_jax']:11.2f}x "
          f"{r['compile_s']:10.1f} {mem:>8}", flush=True)


def print_sampler_table(rows):
  base = {r["size"]: r for r in rows if r["impl"] == "jax/autodiff"}
  print(f"\n{'size':18} {'impl':20} {'fwd ms':>9} {'fwd+bwd ms':>11} {'vs autodiff':>12} "
        f"{'compile s':>10}")
  for r in rows:
    ratio = r["fwd_bwd_ms"] / base[r["size"]]["fwd_bwd_ms"]
    r["fwd_bwd_vs_autodiff"] = ratio
    print(f"{r['size']:18} {r['impl']:20} {r['fwd_ms']:9.3f} {r['fwd_bwd_ms']:11.3f} "
          f"{ratio:11.2f}x {r['compile_s']:10.2f}", flush=True)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--suite", choices=("all", "model", "sampler"), default="all")
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--sizes", default=None,
                      help=f"comma list of model sizes of {[s[0] for s in MODEL_SIZES]} "
                           f"(default: {','.join(DEFAULT_SIZES)})")
  parser.add_argument("--dtypes", default=",".join(DTYPES))
  parser.add_argument("--torch_compile", action="store_true",
                      help="also time torch.compile of the reference (needs a C++ compiler)")
  parser.add_argument("--out", default=None, help="write the rows and device info as JSON")
  args = parser.parse_args()
  info = {"device": str(jax.devices()[0].device_kind), "platform": jax.devices()[0].platform,
          "jax": jax.__version__, "python": platform.python_version(),
          "cpu_count": os.cpu_count()}
  try:
    import torch
    info.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
  except ImportError:
    pass
  print(f"# {info}", flush=True)
  result = {"info": info}
  if args.suite in ("all", "model"):
    sizes = None
    if args.sizes:
      known = {s[0]: s for s in MODEL_SIZES}
      bad = sorted(set(args.sizes.split(",")) - set(known))
      if bad:
        parser.error(f"--sizes {bad} unknown; choose from {sorted(known)}")
      sizes = [known[n] for n in args.sizes.split(",")]
    result["model"] = bench_model(args.repeats, sizes, args.dtypes.split(","),
                                  args.torch_compile)
    print_model_table(result["model"])
  if args.suite in ("all", "sampler"):
    result["sampler"] = bench_sampler(args.repeats)
    print_sampler_table(result["sampler"])
  if args.out:
    with open(args.out, "w") as fh:
      json.dump(result, fh, indent=1)


if __name__ == "__main__":
  main()
