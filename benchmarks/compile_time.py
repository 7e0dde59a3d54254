"""Compile time of the real training step, each compile in a fresh process.

``step_compile(spec, batch)`` builds the ``Trainer`` of a config (``configs.common.load`` spec,
e.g. ``"ntu:split=xsub60"``) and times ``train_step.lower(...).compile()`` on abstract inputs
of the config's clip shapes: the program a training run compiles, with its optimizer update.
``compare`` runs it for several code trees in turn, round after round, each compile in its own
Python process (no in-process cache), so trees measured in one call share the machine's state.

Command line, from the repository root::

  python -m benchmarks.compile_time --config ntu:split=xsub60 --batch 2 --repeats 3 \
      [--trees OLD_CHECKOUT,.] [--set scan=true] [--out result.json]

``--step_time scan=false scan=true`` instead times the training step of each variant in one
process, alternated (``--repeats`` rounds of 10 steps).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Callable, Optional, Sequence


def step_compile(spec: str, batch: int, overrides: Optional[dict] = None) -> dict:
  """Lowers and compiles the training step of config ``spec`` at ``batch`` clips; returns
  ``{"lower_s", "compile_s", "total_s", "xla_ops", "xla_fusions", "param_leaves"}``."""
  import jax
  import jax.numpy as jnp

  from configs.common import clip_shapes, load
  from benchmarks.xla import xla_stats
  from deform3d.train import sharding as shd
  from deform3d.train.trainer import Trainer

  config = load(spec)
  with config.unlocked():
    config.batch_size = batch
    for key, value in (overrides or {}).items():
      config.model[key] = value
  shapes = clip_shapes(config)
  trainer = Trainer(config, shd.make_mesh(), shapes)
  sharding = trainer.batch_sharding
  abstract_batch = {
      "frames": jax.ShapeDtypeStruct((batch,) + tuple(shapes["frames"]), jnp.float32,
                                     sharding=sharding),
      "keypoints": jax.ShapeDtypeStruct((batch,) + tuple(shapes["keypoints"]), jnp.float32,
                                        sharding=sharding),
      "label": jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=sharding)}
  t0 = time.perf_counter()
  lowered = trainer.train_step.lower(trainer.abstract_state, abstract_batch)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  row = {"lower_s": t1 - t0, "compile_s": t2 - t1, "total_s": t2 - t0,
         "param_leaves": len(jax.tree.leaves(trainer.abstract_state.params))}
  row.update(xla_stats(compiled))
  return row


def _child(tree: str, spec: str, batch: int, overrides: dict) -> dict:
  """``step_compile`` in a fresh interpreter with ``tree`` first on the path."""
  # A tree from before the harness left the package has it at deform3d/bench/.
  code = ("import json, sys; sys.path.insert(0, sys.argv[1])\n"
          "try:\n"
          "  from benchmarks.compile_time import step_compile\n"
          "except ModuleNotFoundError as e:\n"
          "  if e.name != 'benchmarks':\n"
          "    raise\n"
          "  from deform3d.bench.compile_time import step_compile\n"
          "print('ROW ' + json.dumps(step_compile(sys.argv[2], int(sys.argv[3]), "
          "json.loads(sys.argv[4]))))")
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=tree)
  out = subprocess.run([sys.executable, "-c", code, tree, spec, str(batch), json.dumps(overrides)],
                       capture_output=True, text=True, env=env, cwd=tree, check=False)
  rows = [line[4:] for line in out.stdout.splitlines() if line.startswith("ROW ")]
  if out.returncode or not rows:
    raise RuntimeError(f"compile in {tree} failed (rc {out.returncode}):\n{out.stderr[-3000:]}")
  return json.loads(rows[-1])


def compare(trees: Sequence[str], spec: str, batch: int, repeats: int = 3,
            overrides: Optional[dict] = None, log: Callable[[str], None] = print) -> dict:
  """``repeats`` rounds; each round compiles the step once per tree, trees in turn (alternated).
  Returns per tree the rows and the median/min/max of ``total_s``."""
  rows = {tree: [] for tree in trees}
  start = time.perf_counter()
  for r in range(repeats):
    for i, tree in enumerate(trees):
      row = _child(tree, spec, batch, overrides or {})
      rows[tree].append(row)
      done = r * len(trees) + i + 1
      elapsed = time.perf_counter() - start
      eta = elapsed / done * (repeats * len(trees) - done)
      log(f"[{done}/{repeats * len(trees)}] {tree}: total {row['total_s']:.1f} s "
          f"(lower {row['lower_s']:.1f}, compile {row['compile_s']:.1f}), "
          f"{row.get('xla_ops')} ops, {row['param_leaves']} leaves; ETA {eta:.0f} s")
  summary = {}
  for tree, rs in rows.items():
    totals = [r["total_s"] for r in rs]
    summary[tree] = {"rows": rs, "median_s": statistics.median(totals), "min_s": min(totals),
                     "max_s": max(totals)}
  return {"spec": spec, "batch": batch, "overrides": overrides or {}, "trees": summary}


def alternated_step_times(spec: str, batch: int, variants: Sequence[dict], rounds: int = 5,
                          steps: int = 10, log: Callable[[str], None] = print) -> list:
  """Training-step time of each model variant (``overrides`` of ``config.model``), all built in
  this process and timed in turn, round after round (``steps`` steps per turn, after one
  compile and one warm-up step each). Returns per variant the per-step ms of every round and
  their median/min/max."""
  import jax
  import numpy as np

  from configs.common import clip_shapes, load
  from deform3d.train import sharding as shd
  from deform3d.train.trainer import Trainer

  runs = []
  for overrides in variants:
    config = load(spec)
    with config.unlocked():
      config.batch_size = batch
      for key, value in overrides.items():
        config.model[key] = value
    shapes = clip_shapes(config)
    trainer = Trainer(config, shd.make_mesh(), shapes)
    rs = np.random.RandomState(0)
    data = {"frames": rs.randn(batch, *shapes["frames"]).astype(np.float32),
            "keypoints": rs.uniform(-1, 1, (batch,) + tuple(shapes["keypoints"])).astype(
                np.float32),
            "label": rs.randint(0, config.model.num_classes, batch).astype(np.int32)}
    data = shd.global_batch(data, trainer.mesh)
    state = trainer.init(jax.random.key(0))
    state, metrics = trainer.train_step(state, data)  # compile + warm-up
    jax.block_until_ready(metrics)
    runs.append({"overrides": overrides, "trainer": trainer, "state": state, "data": data,
                 "ms": []})
  for r in range(rounds):
    for run in runs:
      t0 = time.perf_counter()
      state = run["state"]
      for _ in range(steps):
        state, metrics = run["trainer"].train_step(state, run["data"])
      jax.block_until_ready(metrics)
      run["state"] = state
      run["ms"].append((time.perf_counter() - t0) / steps * 1e3)
    log(f"round {r + 1}/{rounds}: " + ", ".join(
        f"{run['overrides']} {run['ms'][-1]:.1f} ms" for run in runs))
  return [{"overrides": run["overrides"], "ms": run["ms"], "median_ms":
           statistics.median(run["ms"]), "min_ms": min(run["ms"]), "max_ms": max(run["ms"])}
          for run in runs]


def _value(text):
  try:
    return json.loads(text)
  except json.JSONDecodeError:
    return text


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="embedded:variant=tiny",
                      help="configs.common.load spec, e.g. ntu:split=xsub60")
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--trees", default=".", help="comma-separated code trees to compare")
  parser.add_argument("--set", action="append", default=[],
                      help="model override KEY=VALUE (JSON value), e.g. scan=false")
  parser.add_argument("--step_time", nargs="+", default=None, metavar="KEY=VALUE[,KEY=VALUE]",
                      help="time the step of each variant instead, alternated")
  parser.add_argument("--out", default=None)
  args = parser.parse_args()
  overrides = dict((kv.split("=", 1)[0], _value(kv.split("=", 1)[1])) for kv in args.set)
  if args.step_time:
    variants = [{**overrides, **dict((kv.split("=", 1)[0], _value(kv.split("=", 1)[1]))
                                     for kv in v.split(","))} for v in args.step_time]
    rows = alternated_step_times(args.config, args.batch, variants, rounds=args.repeats)
    for r in rows:
      print(f"{r['overrides']}: median {r['median_ms']:.1f} ms (min {r['min_ms']:.1f}, "
            f"max {r['max_ms']:.1f})")
    if args.out:
      with open(args.out, "w") as fh:
        json.dump({"spec": args.config, "batch": args.batch, "rows": rows}, fh, indent=1)
    return
  trees = [os.path.abspath(t) for t in args.trees.split(",")]
  result = compare(trees, args.config, args.batch, args.repeats, overrides)
  for tree, s in result["trees"].items():
    print(f"{tree}: median {s['median_s']:.1f} s (min {s['min_s']:.1f}, max {s['max_s']:.1f})")
  if args.out:
    with open(args.out, "w") as fh:
      json.dump(result, fh, indent=1)


if __name__ == "__main__":
  main()
