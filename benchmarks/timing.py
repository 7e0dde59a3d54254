"""Timing, memory and compile helpers shared by the benchmark suites (``suites.py``) and the
step profile (``step_profile.py``)."""
from __future__ import annotations

import time

import jax
import numpy as np


def _flops(compiled):
  try:
    cost = compiled.cost_analysis()
  except Exception:  # not every backend reports it
    return None
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  return None if not cost or "flops" not in cost else float(cost["flops"])



def _paired_times(fns, repeats, pause_s=0.05, spread=None):
  """Median seconds of each callable, measured in alternation: repeat r times every callable
  once, in turn, so that all of them see the same state of a shared machine (on a busy 2-core
  VM a whole minute's drift would otherwise enter the ratios). The pause lets one framework's
  worker threads go idle before the other runs. ``spread``, a list, receives each callable's
  ``(min, max)`` seconds."""
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
  if spread is not None:
    spread.extend((float(np.min(t)), float(np.max(t))) for t in times)
  return [float(np.median(t)) for t in times]



def _times(fn, repeats):
  """min/median/max seconds of ``fn`` over ``repeats`` calls after one warm-up call."""
  spread = []
  median = _paired_times([fn], repeats, pause_s=0.0, spread=spread)[0]
  return {"min": spread[0][0], "median": median, "max": spread[0][1]}



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



def minor_faults(fn):
  """Minor page faults of one call of ``fn`` in this process (``getrusage``): on CPU, each is
  a 4 KiB page of freshly mapped memory touched for the first time."""
  import resource
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  fn()
  return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before



def _median_time(fn, repeats):
  """Median seconds of one call of ``fn`` over ``repeats`` calls, after one warm-up call."""
  return _paired_times([fn], repeats, pause_s=0.0)[0]



def compile_grad_step(model, params, data):
  """The compiled fwd+bwd step (cross-entropy and every parameter gradient, no optimizer) on
  ``data = (frames, keypoints, labels)``: ``(compiled, device inputs, compile seconds)``."""
  import optax

  def loss_fn(p, f, k, y):
    logits = model.apply({"params": p}, f, k, train=True)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  xs = [jax.device_put(x) for x in data]
  t = time.perf_counter()
  compiled = jax.jit(jax.value_and_grad(loss_fn)).lower(params, *xs).compile()
  return compiled, xs, time.perf_counter() - t


def resize_cost(batch: int, frames: int, pad: int, out: int, repeats: int = 5,
                device=None) -> dict:
  """What ``dataset.resize="device"`` adds to a step: ``deform3d.ops.resize.resize_crops`` and
  the normalizing for ``batch`` clips of ``frames`` uint8 crops of 0.85 x ``pad`` padded to
  ``pad``, to ``out`` pixels, on ``device`` (default: JAX's first). Returns XLA's FLOP count
  (``gflop``), the compile time and the run time (``ms``: min/median/max of ``repeats``)."""
  import jax.numpy as jnp
  from deform3d.ops.resize import resize_crops
  from deform3d.pixels import normalize_pixels
  device = device or jax.devices()[0]
  rs = np.random.RandomState(0)
  args = [jax.device_put(x, device) for x in (
      rs.randint(0, 256, (batch, frames, pad, pad, 3)).astype(np.uint8),
      np.full((batch,), int(0.85 * pad), np.int32), np.arange(batch) % 2 == 1)]
  fn = jax.jit(lambda f, c, fl: normalize_pixels(resize_crops(f, c, out, fl)))
  t = time.perf_counter()
  compiled = fn.lower(*args).compile()
  compile_s = time.perf_counter() - t
  times = _times(lambda: jax.block_until_ready(compiled(*args)), repeats)
  flops = _flops(compiled)
  return {"batch": batch, "frames": frames, "pad": pad, "out": out,
          "gflop": None if flops is None else flops / 1e9, "compile_s": compile_s,
          "ms": {k: 1e3 * v for k, v in times.items()}, "platform": device.platform}
