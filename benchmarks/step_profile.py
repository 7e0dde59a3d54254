"""Where a jitted training step's time goes: ``python -m benchmarks.suites --suite profile``.

Traces a few executions of the compiled fwd+bwd step with ``jax.profiler`` (a Perfetto trace), and
joins each executed op (an XLA:CPU thunk, named after its HLO instruction) with that instruction's
``op_name`` metadata, which carries the Flax module path and whether the op belongs to the forward
pass (``jvp(...)``) or the backward pass (``transpose(jvp(...))``). Reports the op time per module
and pass, per kind of op (matmul, data movement, other fused elementwise/reduction work), the op
count, the FLOP rate against a reference matmul rate, and the minor page faults of one step.

On a GPU the device's kernel events carry their HLO instruction as the ``hlo_op`` argument
(``device_events``); that path is written for the lent GPU and tested on CPU only with
synthetic events (``tests/test_benchmark.py``).
"""
from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import tempfile

import jax
import numpy as np

from benchmarks.timing import _flops, _times, compile_grad_step, minor_faults
from benchmarks.xla import xla_stats

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.-]+) = (\S+) ([a-z][\w-]*)\((.*)$", re.M)


def hlo_instructions(hlo_text):
  """``{name: (opcode, shape, op_name, category)}`` for the entry computation's instructions.

  ``category``: ``matmul`` (a dot or convolution, alone or inside a library fusion), ``data
  movement`` (copies, transposes, concatenates, pads, slices, broadcasts, gathers/scatters and
  the fusions named after them), ``other`` (fused elementwise and reduction work).
  """
  bodies = {}
  for m in re.finditer(r"^%?([\w.-]+) .*?\{\n(.*?)^\}", hlo_text, re.M | re.S):
    bodies[m.group(1)] = m.group(2)
  entry = hlo_text[hlo_text.index("\nENTRY"):] if "\nENTRY" in hlo_text else ""
  entry = entry[:entry.find("\n}") + 1]
  out = {}
  for name, shape, opcode, rest in _INSTRUCTION.findall(entry):
    op_name = re.search(r'op_name="([^"]*)"', rest)
    calls = re.search(r"calls=%?([\w.-]+)", rest)
    body = bodies.get(calls.group(1), "") if calls else ""
    if opcode in ("dot", "convolution") or re.search(r"\b(dot|convolution)\(", body):
      category = "matmul"
    elif re.match(r"(copy|transpose|concatenate|pad|slice|broadcast|dynamic|gather|scatter|"
                  r"bitcast|reshape|wrapped_broadcast|wrapped_concatenate)", name) or opcode in (
                      "copy", "transpose", "concatenate", "pad", "slice", "broadcast", "gather",
                      "scatter", "dynamic-slice", "dynamic-update-slice"):
      category = "data movement"
    else:
      category = "other"
    if not op_name:  # a fusion whose root carries no metadata: the first fused op's
      op_name = re.search(r'op_name="([^"]*)"', body)
    out[name] = (opcode, shape, op_name.group(1) if op_name else "", category)
  return out


def module_key(op_name, depth=3):
  """``(pass, module)`` of an HLO ``op_name``: pass is ``fwd``, ``bwd`` or ``other``; module is
  the Flax path below the model, block indices replaced by ``*``, cut to ``depth`` levels, with
  the primitive (the last component) dropped."""
  if "transpose(jvp(" in op_name:
    phase = "bwd"
  elif "jvp(" in op_name:
    phase = "fwd"
  else:
    phase = "other"
  path = re.sub(r"^jit\([^)]*\)/", "", op_name)
  path = re.sub(r"^(transpose\()?(jvp\()?\w+\)*/?", "", path)
  parts = [p for p in path.split("/") if p][:-1]
  # The top model's own methods ("Deform3DTransformer.run_blocks") are not modules.
  parts = [re.sub(r"\d+", "*", p) for p in parts
           if not p.startswith(("jit(", "vmap(", "checkpoint", "Deform3DTransformer."))]
  # "block*/block*.pose_layers" -> "block*/pose_layers": Flax repeats the parent in method names.
  parts = [p.split(".", 1)[1] if "." in p else p for p in parts]
  return phase, "/".join(parts[:depth]) or "(model inputs and loss)"


def trace_events(run, steps, log_dir):
  """Runs ``run()`` ``steps`` times under ``jax.profiler`` and returns the complete ("X")
  events of the Perfetto trace: ``[(name, duration_us)]``."""
  jax.profiler.start_trace(log_dir, create_perfetto_trace=True)
  try:
    for _ in range(steps):
      run()
  finally:
    jax.profiler.stop_trace()
  paths = glob.glob(os.path.join(log_dir, "**", "perfetto_trace.json.gz"), recursive=True)
  if not paths:
    raise RuntimeError(f"step_profile: jax.profiler wrote no perfetto_trace.json.gz under {log_dir}")
  with gzip.open(max(paths, key=os.path.getmtime)) as fh:
    data = json.load(fh)
  events = data["traceEvents"] if isinstance(data, dict) else data
  return device_events(events)


def device_events(events):
  """``[(HLO instruction, duration_us)]`` of the ops that ran: on XLA:CPU the thunk events
  (named after their instruction); on a GPU the kernels of the device's processes (named after
  the kernel; their ``hlo_op`` argument names the instruction). Host-side events of a GPU run
  (launches, the runtime's own spans) are left out."""
  names = {e.get("pid"): e.get("args", {}).get("name", "") for e in events
           if e.get("ph") == "M" and e.get("name") == "process_name"}
  devices = {pid for pid, name in names.items() if "/device:GPU" in name}
  out = []
  for e in events:
    if e.get("ph") != "X" or (devices and e.get("pid") not in devices):
      continue
    out.append((e.get("args", {}).get("hlo_op") or e["name"], float(e.get("dur", 0.0))))
  return out


def summarize(events, instructions, steps, depth=3):
  """Per-step op time (ms) grouped by ``(pass, module)`` and by category, from trace events
  whose names are HLO instructions of the profiled program."""
  by_module, by_category, count = (collections.Counter(), collections.Counter(),
                                   collections.Counter())
  for name, dur in events:
    if name not in instructions:
      continue
    _, _, op_name, category = instructions[name]
    key = module_key(op_name, depth)
    by_module[key] += dur / 1e3 / steps
    by_category[(key[0], category)] += dur / 1e3 / steps
    count[key] += 1
  total = sum(by_module.values())
  modules = [{"pass": k[0], "module": k[1], "ms": v, "share": v / total if total else 0.0,
              "ops_executed": count[k] // steps} for k, v in by_module.most_common()]
  categories = [{"pass": k[0], "category": k[1], "ms": v, "share": v / total if total else 0.0}
                for k, v in by_category.most_common()]
  passes = {p: sum(r["ms"] for r in modules if r["pass"] == p) for p in ("fwd", "bwd", "other")}
  return {"op_ms_per_step": total, "ops_executed_per_step": sum(count.values()) // steps,
          "pass_ms": passes, "modules": modules, "categories": categories}


def profile_step(model, params, data, steps=3, depth=3, reference_gflops=None):
  """Profile of the jitted fwd+bwd step (cross-entropy and every gradient, no optimizer) of
  ``model`` on ``data = (frames, keypoints, labels)``; see the module docstring."""

  compiled, xs, _ = compile_grad_step(model, params, data)
  run = lambda: jax.block_until_ready(compiled(params, *xs))
  run()  # a first warm-up; _times runs one more
  times = _times(run, steps)
  faults = minor_faults(run)
  with tempfile.TemporaryDirectory() as log_dir:
    events = trace_events(run, steps, log_dir)
  result = summarize(events, hlo_instructions(compiled.as_text()), steps, depth)
  step_ms = 1e3 * times["median"]
  flops = _flops(compiled)
  result.update(xla_stats(compiled), step_ms=step_ms,
                step_ms_min_max=[1e3 * times["min"], 1e3 * times["max"]],
                minor_faults_per_step=faults, page_fault_mb_per_step=faults * 4096 / 2**20,
                gflop_per_step=None if flops is None else flops / 1e9)
  if flops is not None:
    result["gflops_per_s"] = flops / 1e9 / (step_ms / 1e3)
    if reference_gflops:
      result["reference_gflops_per_s"] = reference_gflops
      result["fraction_of_reference"] = result["gflops_per_s"] / reference_gflops
  return result


def print_profile(result, top=20, log=print):
  log(f"step {result['step_ms']:.0f} ms (median), ops traced {result['op_ms_per_step']:.0f} ms "
      f"per step: fwd {result['pass_ms']['fwd']:.0f}, bwd {result['pass_ms']['bwd']:.0f}, "
      f"other {result['pass_ms']['other']:.0f}; {result.get('xla_ops')} ops in the program, "
      f"{result['ops_executed_per_step']} executed; {result['minor_faults_per_step']} minor "
      f"page faults ({result['page_fault_mb_per_step']:.0f} MB)")
  if "gflops_per_s" in result:
    ref = (f", {100 * result['fraction_of_reference']:.0f}% of {result['reference_gflops_per_s']:.0f}"
           if "fraction_of_reference" in result else "")
    log(f"{result['gflop_per_step']:.1f} GFLOP per step, {result['gflops_per_s']:.1f} GFLOP/s{ref}")
  log("| pass | category | ms | share |\n| --- | --- | --- | --- |")
  for r in result["categories"]:
    log(f"| {r['pass']} | {r['category']} | {r['ms']:.1f} | {100 * r['share']:.1f}% |")
  log("| pass | module | ms | share | ops |\n| --- | --- | --- | --- | --- |")
  for r in result["modules"][:top]:
    log(f"| {r['pass']} | {r['module']} | {r['ms']:.1f} | {100 * r['share']:.1f}% | "
        f"{r['ops_executed']} |")


def plot_profile(result, path, top=16):
  """A PNG bar chart of the ``top`` modules' forward and backward op time per step."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  totals = collections.Counter()
  for r in result["modules"]:
    totals[r["module"]] += r["ms"]
  names = [m for m, _ in totals.most_common(top)][::-1]
  ms = {(r["pass"], r["module"]): r["ms"] for r in result["modules"]}
  fig, ax = plt.subplots(figsize=(8, 0.35 * len(names) + 1.5))
  left = np.zeros(len(names))
  for phase, colour in (("fwd", "tab:blue"), ("bwd", "tab:orange"), ("other", "tab:gray")):
    vals = np.array([ms.get((phase, n), 0.0) for n in names])
    ax.barh(names, vals, left=left, color=colour, label=phase)
    left += vals
  ax.set_xlabel("op time per step (ms)")
  ax.set_title(result.get("title", "fwd+bwd step"), fontsize=9)
  ax.legend(loc="lower right")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
