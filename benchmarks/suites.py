"""Benchmarks, side by side in one run: ``python -m benchmarks.suites [--out results.json]``
from the repository root (this module is the harness and its command line).

Suites (``--suite model|sampler|all``, and ``paper``, ``profile``, ``matmul``):

* ``model``: the full ``Deform3DTransformer``, forward (eval) and forward+backward (cross-entropy
  and all parameter gradients) at several sizes and dtypes, next to the PyTorch reference
  implementation of the same model (``benchmarks/torch_reference.py``, loaded with the same
  parameters; ``tests/test_torch_reference.py`` checks equal logits and gradients). Reports
  step time, clips/s, JAX compile time, peak memory and the JAX-over-torch speedup.
* ``sampler``: ``grid_sample_3d`` alone with each ``backward`` variant (autodiff scatter-add,
  one-hot matmul, sorted segment sum) next to ``torch.nn.functional.grid_sample``.
* ``paper`` (not in ``all``): the paper datasets' model (``configs/ntu.py``, NTU60 X-Sub) at
  ``--batch``, one whole training step as ``launch/train.py`` runs it (the config's dropout and
  drop path, cross-entropy, gradients and the config's optimizer update), for each row of
  ``PAPER_ROWS`` (dtype x sampler backward x fast/plain), each in its own process so that its
  peak memory is its own: compile time, step time (min/median/max), forward time, peak memory,
  XLA's FLOP count and the FLOP/s reached. Rows stop being started after ``--budget_s``; the
  JSON is rewritten after every row. Meant for an accelerator: on CPU one row takes minutes.
* ``profile`` (not in ``all``): where one fwd+bwd step's time goes
  (``benchmarks/step_profile.py``; XLA:CPU ops, or a GPU's kernels by their HLO op): op time per model module and pass (forward/backward) and per
  kind of op, the op count, the FLOP rate as a fraction of ``--reference_gflops`` (e.g. the
  ``matmul`` suite's square-product rate), the minor page faults of one step; ``--plot`` writes
  a PNG bar chart. The size is ``--sizes`` (one of ``MODEL_SIZES``, default embedded).
* ``matmul`` (not in ``all``): float32 and bfloat16 matmul GFLOP/s at the model's shapes under
  several ``XLA_FLAGS`` sets (``XLA_FLAG_SETS``: XLA:CPU's oneDNN and XNNPACK paths), each in
  its own process, beside torch's. ``taskset -c 0`` gives one core's numbers.

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

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import step_profile
from benchmarks.timing import _flops, _median_time, _paired_times, _times  # noqa: F401
from benchmarks.timing import compile_grad_step, minor_faults, peak_memory  # noqa: F401
from benchmarks.timing import resize_cost
from benchmarks.xla import mb as _mb, xla_stats  # noqa: F401
from deform3d.ops import grid_sample_3d

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (name, N, D, H, W, C, points per item): the model's default use (batch 32 x 2 groups, 8x6x6
# volume, 4x3x3 points) and a paper-scale layer (batch 8 x 2 groups, 16x28x28, 8x7x7 points).
SIZES = [("embedded-default", 64, 8, 6, 6, 32, 36), ("paper-scale", 16, 16, 28, 28, 64, 392)]


# --suite matmul: matmul throughput per dtype under XLA flag sets, each set in its own process
# (XLA reads XLA_FLAGS once), beside torch's at the same shapes. Shapes (M, K, N): a square
# product and the embedded model's largest dense layers (B=32 x T=8 x 35 tokens, C=64, MLP 4C).
MATMUL_SHAPES = ((1024, 1024, 1024), (8960, 64, 256), (8960, 256, 64))
XLA_FLAG_SETS = {
    "default": "",
    "onednn": "--xla_cpu_use_onednn=true",
    "onednn_custom_call": "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call=true",
    "xnnpack": "--xla_cpu_use_xnnpack=true",
}


def matmul_rows(repeats, label, shapes=MATMUL_SHAPES):
  """GFLOP/s of ``x @ w`` for each shape in float32 and bfloat16 (bf16 inputs and output,
  float32 accumulation as in the model), min/median/max over ``repeats`` calls."""
  rows = []
  for m, k, n in shapes:
    rng = np.random.default_rng(0)
    for dtype in ("float32", "bfloat16"):
      x = jnp.asarray(rng.standard_normal((m, k)), dtype)
      w = jnp.asarray(rng.standard_normal((k, n)), dtype)
      f = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32).astype(a.dtype))
      times = _times(lambda: jax.block_until_ready(f(x, w)), repeats)
      rows.append(_matmul_row(f"jax[{label}]", (m, k, n), dtype, times))
  return rows


def _matmul_row(impl, shape, dtype, times):
  m, k, n = shape
  return {"impl": impl, "shape": [m, k, n], "dtype": dtype,
          **{f"{q}_ms": 1e3 * t for q, t in times.items()},
          "gflops_per_s": 2 * m * k * n / times["median"] / 1e9}


def torch_matmul_rows(repeats, shapes=MATMUL_SHAPES):
  import torch
  torch.set_num_threads(len(os.sched_getaffinity(0)))
  rows = []
  for m, k, n in shapes:
    for dtype, tdt in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
      x, w = torch.randn(m, k, dtype=tdt), torch.randn(k, n, dtype=tdt)
      times = _times(lambda: x @ w, repeats)
      rows.append(_matmul_row("torch", (m, k, n), dtype, times))
  return rows


def bench_matmul(repeats, flag_sets=tuple(XLA_FLAG_SETS), log=print):
  """``--suite matmul``: every flag set of ``XLA_FLAG_SETS`` in a fresh process, then torch in
  this one. Run it under ``taskset -c 0`` (and with 1 torch thread) for one core's numbers."""
  rows = []
  for name in flag_sets:
    env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " " +
                                      XLA_FLAG_SETS[name]).strip())
    result, error = _child("--matmul_rows", [repeats, name], env)
    if error is not None:
      rows.append({"impl": f"jax[{name}]", "error": error})
      log(f"jax[{name}] FAILED: {error.splitlines()[-1:]}")
      continue
    rows += result
  try:
    rows += torch_matmul_rows(repeats)
  except ImportError:
    pass
  for r in rows:
    if "error" not in r:
      log(f"{r['impl']:28} {str(tuple(r['shape'])):18} {r['dtype']:9} {r['median_ms']:9.3f} ms "
          f"({r['min_ms']:.3f}-{r['max_ms']:.3f})  {r['gflops_per_s']:7.1f} GFLOP/s")
  return rows


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
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    vt = torch.tensor(np.asarray(vol), device=dev).permute(0, 4, 1, 2, 3).contiguous()
    vt.requires_grad_(True)
    gt = torch.tensor(np.asarray(grid), device=dev).reshape(n, p, 1, 1, 3).requires_grad_(True)

    def sample():
      out = torch.nn.functional.grid_sample(vt, gt, align_corners=False)
      sync()
      return out

    def fwd_bwd():
      vt.grad = gt.grad = None
      (torch.nn.functional.grid_sample(vt, gt, align_corners=False) ** 2).sum().backward()
      sync()

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


# --suite paper. Rows: (dtype, sampler backward, fast), the most asked-for first: the config's
# own setting (bf16, fast) with the sampler's gradient variants, float32, the plain modules.
PAPER_SPEC = "ntu:split=xsub60"
PAPER_ROWS = (
    ("bfloat16", "autodiff", True), ("bfloat16", "sorted", True), ("float32", "autodiff", True),
    ("bfloat16", "autodiff", False), ("float32", "sorted", True), ("bfloat16", "onehot", True),
)


def paper_row(spec, batch, dtype, backward, fast, repeats):
  """One row of ``--suite paper``, measured in this process (see the module docstring)."""
  import optax
  from configs.common import clip_shapes
  from deform3d.models import build_model
  from deform3d.ops.sampling import resolve_backward
  from deform3d.train.trainer import make_optimizer

  kind = _kind(fast)
  config = size_config(spec, {})
  model = build_model({**config.model, "dtype": dtype, "fast": kind != "plain",
                       "attention_kernel": "pallas" if kind == "fused" else "xla",
                       "sampler_backward": backward})
  frames, keypoints, labels = _model_inputs(model, batch, clip_shapes(config))
  device = jax.devices()[0]
  xs = [jax.device_put(x, device) for x in (frames, keypoints, labels)]
  params = jax.jit(model.init)(jax.random.key(0), xs[0][:1], xs[1][:1])["params"]
  tx, _ = make_optimizer(config)
  opt_state = jax.jit(tx.init)(params)

  def train_step(p, o, f, k, y, rng):
    def loss_fn(p):
      logits = model.apply({"params": p}, f, k, train=True, rngs={"dropout": rng})
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    loss, grads = jax.value_and_grad(loss_fn)(p)
    updates, o = tx.update(grads, o, p)
    return optax.apply_updates(p, updates), o, loss

  step = jax.jit(train_step, donate_argnums=(0, 1))
  fwd = jax.jit(lambda p, f, k: model.apply({"params": p}, f, k))
  rng = jax.random.key(1)
  t = time.perf_counter()
  compiled = step.lower(params, opt_state, *xs, rng).compile()
  compile_s = time.perf_counter() - t
  fwd_compiled = fwd.lower(params, *xs[:2]).compile()
  state = [params, opt_state]

  def run_step():
    state[0], state[1], loss = compiled(state[0], state[1], *xs, rng)
    jax.block_until_ready(loss)

  run_fwd = lambda: jax.block_until_ready(fwd_compiled(state[0], *xs[:2]))
  if device.platform == "cpu":
    _trim()
    peak = peak_memory(run_step)  # the step's own rise of the process peak (module docstring)
  else:
    run_step()
    peak = (device.memory_stats() or {}).get("peak_bytes_in_use")  # this process's peak
  step_s = _times(run_step, repeats)
  fwd_s = _times(run_fwd, repeats)
  flops = _flops(compiled)
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state[0]))
  row = {"spec": spec, "batch": batch, "dtype": dtype, "sampler_backward": backward,
         "sampler_backward_resolved": resolve_backward(backward, device.platform),
         "fast": fast, "params": n_params, "compile_s": compile_s,
         "step_ms": {k: 1e3 * v for k, v in step_s.items()},
         "fwd_ms": {k: 1e3 * v for k, v in fwd_s.items()},
         "clips_per_s": batch / step_s["median"], "peak_mem_mb": _mb(peak),
         "step_tflops": None if flops is None else flops / 1e12,
         "tflops_per_s": None if flops is None else flops / 1e12 / step_s["median"]}
  row.update(xla_stats(compiled))
  if config.dataset.get("resize", "host") == "device":
    # The frames above are the model's; with the config's device resize the step also resizes
    # the input pipeline's padded crops first (docs/data.md): its cost, on the same device.
    row["device_resize"] = resize_cost(batch, config.num_frames, config.dataset.crop_pad,
                                       config.image_size, repeats, device)
  return row


def _child(flag, args, env=None):
  """Runs ``flag`` (``--paper_row`` / ``--matmul_rows``) of this script on ``args`` in a fresh
  process: ``(its JSON result, None)``, or ``(None, the end of its error output)``."""
  import subprocess
  env = dict(os.environ if env is None else env)
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, env.get("PYTHONPATH")]))
  proc = subprocess.run([sys.executable, "-m", "benchmarks.suites", flag, json.dumps(args)],
                        capture_output=True, text=True, env=env, cwd=ROOT)
  lines = [line for line in proc.stdout.splitlines() if line.startswith(("{", "["))]
  if proc.returncode == 0 and lines:
    return json.loads(lines[-1]), None
  return None, (proc.stderr or proc.stdout).strip()[-2000:]


def bench_paper(spec=PAPER_SPEC, batch=16, repeats=10, rows=PAPER_ROWS, budget_s=None,
                on_row=None, log=print):
  """``--suite paper``: each row of ``rows`` in a fresh process (``paper_row``). A row that
  fails (e.g. out of memory) is recorded with its error; after the first row, none is started
  once ``budget_s`` seconds have passed. ``on_row(rows so far)`` is called after every row."""
  done = []
  start = time.perf_counter()
  for dtype, backward, fast in rows:
    if done and budget_s is not None and time.perf_counter() - start > budget_s:
      log(f"# budget of {budget_s} s spent: row {dtype}/{backward}/fast={fast} not started")
      break
    row, error = _child("--paper_row", [spec, batch, dtype, backward, fast, repeats])
    if error is not None:
      row = {"spec": spec, "batch": batch, "dtype": dtype, "sampler_backward": backward,
             "fast": fast, "error": error}
    done.append(row)
    log(_paper_line(row))
    if on_row:
      on_row(done)
  return done


def _kind(fast):
  """A paper row's modules: ``fast``, ``plain`` or ``fused`` (fast + the fused attention)."""
  return {True: "fast", False: "plain"}.get(fast, fast)


def _paper_line(r):
  name = f"{r['dtype']:9} {r['sampler_backward']:8} {_kind(r['fast']):5}"
  if "error" in r:
    return f"{name} FAILED: {r['error'].splitlines()[-1] if r['error'] else '?'}"
  st, mem = r["step_ms"], r.get("peak_mem_mb")
  tf = "-" if r.get("tflops_per_s") is None else f"{1e3 * r['tflops_per_s']:.1f}"
  return (f"{name} step {st['median']:8.1f} ms (min {st['min']:.1f}, max {st['max']:.1f})  "
          f"fwd {r['fwd_ms']['median']:8.1f} ms  {r['clips_per_s']:7.1f} clips/s  "
          f"compile {r['compile_s']:5.1f} s  peak {'-' if mem is None else f'{mem:.0f}'} MB  "
          f"{tf} GFLOP/s  {r.get('xla_ops', '-')} XLA ops")


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


def _jax_impl(model, params, data, impl="jax"):
  """The jitted JAX forward and step as zero-argument callables, with compile times."""
  fwd = jax.jit(lambda p, f, k: model.apply({"params": p}, f, k))
  compiled, xs, compile_s = compile_grad_step(model, params, data)
  t = time.perf_counter()
  fwd_compiled = fwd.lower(params, *xs[:2]).compile()
  info = {"impl": impl, "compile_s": compile_s, "compile_fwd_s": time.perf_counter() - t}
  info.update(xla_stats(compiled))
  return (info, lambda: jax.block_until_ready(fwd_compiled(params, *xs[:2])),
          lambda: jax.block_until_ready(compiled(params, *xs)))


def _torch_impls(model, params, data, dtype, torch_compile, torch_fast=False):
  """The PyTorch reference's forward and step (eager, and optionally torch.compile), of the
  plain program and, with ``torch_fast``, of the fast one."""
  import torch
  from benchmarks import torch_reference
  frames, keypoints, labels = data
  tp = torch_reference.params_from_flax(jax.device_get(params), requires_grad=True)
  tf_, tk, ty = torch.tensor(frames), torch.tensor(keypoints), torch.tensor(labels)
  autocast = ((lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if dtype == "bfloat16"
              else contextlib.nullcontext)
  # The plain program, and (torch_fast) the same rewrites as the Flax model's fast.py.
  forms = [(False, "")] + ([(True, " fast")] if torch_fast else [])
  variants = [("torch" + tag, torch_reference.forward, fast) for fast, tag in forms]
  if torch_compile:
    # The reference calls ``block`` once per block with differently shaped parameters (and the
    # two programs and train/eval each once more): well over dynamo's default of 8 compiled
    # versions, past which it silently runs the rest in eager mode.
    config = torch._dynamo.config
    limit = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    setattr(config, limit, max(getattr(config, limit), 256))
    variants += [("torch.compile" + tag, torch.compile(torch_reference.forward), fast)
                 for fast, tag in forms]
  impls = []
  for impl, forward, fast in variants:
    cfg = dict(torch_reference.model_fields(model), fast=fast)

    def t_fwd(forward=forward, cfg=cfg):
      with torch.no_grad(), autocast():
        forward(tp, tf_, tk, cfg)

    def t_step(forward=forward, cfg=cfg):
      for v in _leaves(tp):
        v.grad = None
      with autocast():
        loss = torch.nn.functional.cross_entropy(forward(tp, tf_, tk, cfg, train=True), ty)
      loss.backward()

    t = time.perf_counter()
    t_step()
    first_s = time.perf_counter() - t
    compiled = impl.startswith("torch.compile")
    impls.append(({"impl": impl, "compile_s": first_s if compiled else 0.0},
                  t_fwd, t_step))
  return impls


def bench_model(repeats, sizes=None, dtypes=DTYPES, torch_compile=False, jax_plain=False,
                torch_fast=False, jax_fused=False, batch=None, log=print):
  """Rows of the full-model suite (one per size x dtype x implementation). For each size and
  dtype the implementations' steps are timed in alternation (``_paired_times``), then their
  peak memory one at a time. "jax" is the config's model (``fast=True``); with ``jax_plain``,
  "jax plain" is the same model and parameters with the plain modules (``fast=False``), the
  same program as "torch"; with ``torch_fast``, "torch fast" runs the reference with the same
  rewrites as "jax" (``torch_reference``'s ``fast``); with ``jax_fused``, "jax fused" is "jax"
  with the fused deformable attention (``attention_kernel="pallas"``). ``batch`` replaces the
  sizes' own batch."""
  try:
    import torch  # noqa: F401
    from benchmarks import torch_reference  # noqa: F401
    with_torch = True
  except ImportError:
    with_torch = False
  rows = []
  batch_override = batch
  for name, spec, overrides, batch in sizes or [s for s in MODEL_SIZES
                                                if s[0] in DEFAULT_SIZES]:
    config = size_config(spec, overrides)
    batch = batch_override or batch
    for dtype in dtypes:
      model, params, data, label = _build(config, dtype, batch)
      impls = [_jax_impl(model, params, data)]
      if jax_fused:
        impls.append(_jax_impl(model.clone(attention_kernel="pallas"), params, data,
                               "jax fused"))
      if jax_plain:
        impls.append(_jax_impl(model.clone(fast=False), params, data, "jax plain"))
      if with_torch:
        impls += _torch_impls(model, params, data, dtype, torch_compile, torch_fast)
      fwd_spread, step_spread = [], []
      fwd_s = _paired_times([f for _, f, _ in impls], repeats, spread=fwd_spread)
      step_s = _paired_times([s for _, _, s in impls], repeats, spread=step_spread)
      new = []
      for (info, _, run_step), f, st, fs, ss in zip(impls, fwd_s, step_s, fwd_spread,
                                                     step_spread):
        _trim()
        device = jax.devices()[0] if info["impl"].startswith("jax") else None
        row = dict(info, fwd_ms=1e3 * f, fwd_bwd_ms=1e3 * st,
                   fwd_ms_min_max=[1e3 * x for x in fs],
                   fwd_bwd_ms_min_max=[1e3 * x for x in ss],
                   peak_mem_mb=_mb(peak_memory(run_step, device)),
                   minor_faults_per_step=minor_faults(run_step), size=name,
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


def profile_suite(size, dtype, plain=False, reference_gflops=None, plot=None, fused=False,
                  batch=None, log=print):
  """``--suite profile``: ``step_profile.profile_step`` of one ``MODEL_SIZES`` entry."""
  known = {s[0]: s for s in MODEL_SIZES}
  if size not in known:
    raise SystemExit(f"--sizes {size!r}: --suite profile takes one of {sorted(known)}")
  _, spec, overrides, default_batch = known[size]
  batch = batch or default_batch
  model, params, data, label = _build(size_config(spec, overrides), dtype, batch)
  if plain:
    model = model.clone(fast=False)
  if fused:
    model = model.clone(attention_kernel="pallas")
  result = step_profile.profile_step(model, params, data, reference_gflops=reference_gflops)
  kind = "plain" if plain else "fused" if fused else "fast"
  result.update(size=size, label=f"{size} {label} {kind}",
                title=f"{size} {label}, {kind} modules, "
                      f"{jax.devices()[0].device_kind}, {len(os.sched_getaffinity(0))} threads")
  step_profile.print_profile(result, log=log)
  if plot:
    step_profile.plot_profile(result, plot)
  return result


def _leaves(tree):
  if isinstance(tree, dict):
    for v in tree.values():
      yield from _leaves(v)
  else:
    yield tree


def _row_line(r):
  mem = "-" if r.get("peak_mem_mb") is None else f"{r['peak_mem_mb']:.0f}"
  lo, hi = r.get("fwd_bwd_ms_min_max", (float("nan"),) * 2)
  return (f"{r['label']:48} {r['impl']:14} fwd {r['fwd_ms']:9.2f} ms  fwd+bwd "
          f"{r['fwd_bwd_ms']:9.2f} ms ({lo:.1f}-{hi:.1f})  compile {r['compile_s']:6.1f} s  "
          f"peak +{mem} MB  {r.get('xla_ops', '-')} XLA ops")


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
  if len(sys.argv) == 3 and sys.argv[1] == "--paper_row":  # one row of --suite paper
    print(json.dumps(paper_row(*json.loads(sys.argv[2]))), flush=True)
    return
  if len(sys.argv) == 3 and sys.argv[1] == "--matmul_rows":  # one flag set of --suite matmul
    print(json.dumps(matmul_rows(*json.loads(sys.argv[2]))), flush=True)
    return
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--suite", choices=("all", "model", "sampler", "paper", "matmul",
                                          "profile"),
                      default="all")
  parser.add_argument("--batch", type=int, default=16, help="--suite paper: the batch")
  parser.add_argument("--paper_spec", default=PAPER_SPEC, help="--suite paper: the config")
  parser.add_argument("--paper_rows", default=None,
                      help="--suite paper: DTYPE/BACKWARD/fast|plain|fused,... (default: PAPER_ROWS; "
                           "fused: fast with attention_kernel=pallas)")
  parser.add_argument("--budget_s", type=float, default=None,
                      help="--suite paper: after the first row, start none after this many s")
  parser.add_argument("--repeats", type=int, default=10)
  parser.add_argument("--sizes", default=None,
                      help=f"comma list of model sizes of {[s[0] for s in MODEL_SIZES]} "
                           f"(default: {','.join(DEFAULT_SIZES)})")
  parser.add_argument("--dtypes", default=",".join(DTYPES))
  parser.add_argument("--torch_compile", action="store_true",
                      help="also time torch.compile of the reference (needs a C++ compiler)")
  parser.add_argument("--jax_plain", action="store_true",
                      help="also time the JAX model with the plain modules (model.fast=False), "
                           "the program the torch reference computes")
  parser.add_argument("--jax_fused", action="store_true",
                      help="--suite model: also time the JAX model with the fused deformable "
                           "attention (attention_kernel=pallas)")
  parser.add_argument("--model_batch", type=int, default=None,
                      help="--suite model/profile: the batch instead of each size's own")
  parser.add_argument("--torch_fast", action="store_true",
                      help="also time the torch reference with fast.py's rewrites (the program "
                           "the default JAX model computes)")
  parser.add_argument("--out", default=None, help="write the rows and device info as JSON")
  parser.add_argument("--plot", default=None, help="--suite profile: write a PNG bar chart")
  parser.add_argument("--reference_gflops", type=float, default=None,
                      help="--suite profile: the FLOP rate to report the step's as a fraction of")
  parser.add_argument("--plain", action="store_true",
                      help="--suite profile: the plain modules (model.fast=False)")
  parser.add_argument("--fused", action="store_true",
                      help="--suite profile: the fused deformable attention (attention_kernel="
                           "pallas)")
  args = parser.parse_args()
  info = {"device": str(jax.devices()[0].device_kind), "platform": jax.devices()[0].platform,
          "jax": jax.__version__, "python": platform.python_version(), **machine_info()}
  try:
    import torch
    # As many threads as this process may use (``taskset -c 0`` = 1), like XLA:CPU's pool.
    torch.set_num_threads(info["usable_cpus"])
    info.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
  except ImportError:
    pass
  print(f"# { {k: v for k, v in info.items() if k != 'cpu_flags'} }", flush=True)
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
                                  args.torch_compile, args.jax_plain, args.torch_fast,
                                  args.jax_fused, args.model_batch)
    print_model_table(result["model"])
  if args.suite in ("all", "sampler"):
    result["sampler"] = bench_sampler(args.repeats)
    print_sampler_table(result["sampler"])
  if args.suite == "matmul":
    result["matmul"] = bench_matmul(args.repeats)
  if args.suite == "profile":
    result["profile"] = profile_suite(args.sizes or "embedded", args.dtypes.split(",")[0],
                                      args.plain, args.reference_gflops, args.plot,
                                      args.fused, args.model_batch)
  if args.suite == "paper":
    rows = PAPER_ROWS
    if args.paper_rows:
      rows = []
      for item in args.paper_rows.split(","):
        dtype, backward, kind = item.split("/")
        if kind not in ("fast", "plain", "fused"):
          parser.error(f"--paper_rows {item!r}: the third field must be fast, plain or fused")
        rows.append((dtype, backward, {"fast": True, "plain": False}.get(kind, kind)))
    def on_row(done):
      result["paper"] = done
      _write(args.out, result)
    result["paper"] = bench_paper(args.paper_spec, args.batch, args.repeats, rows,
                                  args.budget_s, on_row)
  info["loadavg_after"] = os.getloadavg()
  _write(args.out, result)


def _write(path, result):
  if path:
    with open(path, "w") as fh:
      json.dump(result, fh, indent=1)


# Environment variables that change the timings: recorded with every run.
ENV_RECORDED = ("GLIBC_TUNABLES", "XLA_FLAGS", "OMP_NUM_THREADS", "MALLOC_ARENA_MAX")


def machine_info():
  """The CPU's model, count and flags (``/proc/cpuinfo``), the load average now and the
  ``ENV_RECORDED`` variables that are set."""
  info = {"cpu_count": os.cpu_count(), "usable_cpus": len(os.sched_getaffinity(0)),
          "loadavg_before": os.getloadavg(),
          "env": {k: os.environ[k] for k in ENV_RECORDED if k in os.environ}}
  try:
    with open("/proc/cpuinfo") as fh:
      for line in fh:
        key, _, value = line.partition(":")
        if key.strip() == "model name":
          info.setdefault("cpu_model", value.strip())
        elif key.strip() == "flags":
          info.setdefault("cpu_flags", value.split())
  except OSError:
    pass
  return info


if __name__ == "__main__":
  from deform3d import host_malloc
  host_malloc.maybe_reexec()  # with DEFORM3D_HOST_MALLOC=1 (docs/performance.md)
  main()
