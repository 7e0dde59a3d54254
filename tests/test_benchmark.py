"""The benchmark script runs and reports every implementation (no timing assertions)."""
import json
import os
import subprocess
import sys

import pytest

from benchmarks import step_profile
from benchmarks import suites as benchmark

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_harness_never_imports_tensorflow():
  """The benchmark harness loads without TensorFlow (as the ``deform3d`` code it measures,
  tests/test_train.py), all but the input benchmark (``benchmarks/input_bench.py``), which
  measures the tf.data pipeline: every other ``benchmarks`` module imported in a fresh process
  leaves ``tensorflow`` and ``data_pipelines`` out of ``sys.modules``."""
  from tests import fresh_python
  code = ("import importlib, pkgutil, sys, benchmarks\n"
          "names = [m.name for m in pkgutil.walk_packages(benchmarks.__path__, 'benchmarks.')\n"
          "         if m.name != 'benchmarks.input_bench']\n"
          "for n in names: importlib.import_module(n)\n"
          "print(len(names), sorted({m.split('.')[0] for m in sys.modules} & "
          "{'tensorflow', 'tensorflow_datasets', 'data_pipelines'}))\n")
  count, loaded = fresh_python(code).split(" ", 1)
  assert int(count) >= 7  # the walk found the harness's modules
  assert loaded == "[]", loaded


def test_sampler_benchmark_reports_all_implementations(monkeypatch):
  monkeypatch.setattr(benchmark, "SIZES", [("tiny", 2, 2, 3, 4, 3, 5)])
  rows = benchmark.bench_sampler(repeats=1)
  impls = {r["impl"] for r in rows}
  assert {"jax/autodiff", "jax/onehot", "jax/sorted"} <= impls
  for r in rows:
    assert r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0 and r["compile_s"] >= 0


@pytest.mark.slow
def test_model_benchmark_reports_jax_and_the_torch_reference():
  tiny = [s for s in benchmark.MODEL_SIZES if s[0] == "tiny"]  # configs/embedded.py:variant=tiny
  rows = benchmark.bench_model(repeats=1, sizes=tiny, dtypes=("float32",), jax_plain=True,
                               torch_fast=True, jax_fused=True, batch=3, log=lambda s: None)
  assert [r["impl"] for r in rows] == ["jax", "jax fused", "jax plain", "torch", "torch fast"]
  assert {r["batch"] for r in rows} == {3}
  for r in rows:
    assert r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0 and r["clips_per_s_fwd_bwd"] > 0
    assert r["size"] == "tiny" and r["dtype"] == "float32" and r["minor_faults_per_step"] >= 0
    lo, hi = r["fwd_bwd_ms_min_max"]
    assert 0 < lo <= r["fwd_bwd_ms"] <= hi
  assert rows[0]["compile_s"] > 0 and rows[0]["fwd_bwd_speedup_of_jax"] == 1.0
  for r in rows[1:]:
    assert abs(r["fwd_bwd_speedup_of_jax"] - r["fwd_bwd_ms"] / rows[0]["fwd_bwd_ms"]) < 1e-9
  assert rows[1]["compile_s"] > 0 and rows[2]["compile_s"] > 0  # programs of their own
  assert all(r["xla_ops"] > 0 for r in rows[:3])
  assert "xla_ops" not in rows[3] and "xla_ops" not in rows[4]


@pytest.mark.slow
def test_paper_suite_writes_its_json(tmp_path):
  """``--suite paper`` on CPU (NTU's small local config instead of the paper's): each row runs
  in its own process and lands in the JSON with its timings, memory and FLOPs; the machine's
  facts and load are recorded."""
  import json
  import subprocess
  out = tmp_path / "paper.json"
  proc = subprocess.run([sys.executable, "-m", "benchmarks.suites", "--suite", "paper",
                         "--paper_spec", "ntu:runlocal=true", "--batch", "2", "--repeats", "2",
                         "--paper_rows", "float32/auto/fused", "--out", str(out)],
                        capture_output=True, text=True, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(out.read_text())
  info = result["info"]
  assert info["platform"] == "cpu" and info["cpu_count"] >= 1
  assert len(info["loadavg_before"]) == 3 and len(info["loadavg_after"]) == 3
  assert "cpu_flags" in info or not os.path.exists("/proc/cpuinfo")
  (row,) = result["paper"]
  assert "error" not in row, row.get("error")
  # "fused": the fast modules with the fused deformable attention.
  assert (row["dtype"], row["sampler_backward"], row["fast"]) == ("float32", "auto", "fused")
  assert row["sampler_backward_resolved"] == "autodiff"
  step = row["step_ms"]
  assert 0 < step["min"] <= step["median"] <= step["max"]
  assert row["fwd_ms"]["median"] > 0 and row["compile_s"] > 0 and row["params"] > 0
  assert row["clips_per_s"] == pytest.approx(2 / (step["median"] / 1e3))
  assert row["step_tflops"] > 0 and row["peak_mem_mb"] is not None
  assert 0 < row["xla_fusions"] <= row["xla_ops"]
  # The NTU config resizes the pipeline's crops in the step: that cost is its own entry.
  resize = row["device_resize"]
  assert (resize["batch"], resize["frames"], resize["pad"], resize["out"]) == (2, 4, 256, 32)
  assert resize["gflop"] > 0 and resize["ms"]["median"] > 0


def test_paper_suite_records_a_failing_row_and_stops_at_the_budget():
  rows = benchmark.bench_paper("embedded:variant=tiny", batch=2, repeats=1,
                               rows=[("float8", "auto", True), ("float32", "auto", True)],
                               budget_s=0.0, log=lambda s: None)
  (row,) = rows  # the second row is not started: the budget is spent
  assert row["dtype"] == "float8" and "dtype" in row["error"]


def test_matmul_suite_runs_each_xla_flag_set_in_its_own_process():
  rows = benchmark.bench_matmul(repeats=1, flag_sets=("default", "onednn"), log=lambda s: None)
  by_impl = {}
  for r in rows:
    assert "error" not in r, r.get("error")
    by_impl.setdefault(r["impl"], []).append(r)
  assert {"jax[default]", "jax[onednn]"} <= set(by_impl)
  for impl_rows in by_impl.values():
    assert len(impl_rows) == 2 * len(benchmark.MATMUL_SHAPES)  # float32 and bfloat16 each
    for r in impl_rows:
      assert 0 < r["min_ms"] <= r["median_ms"] <= r["max_ms"] and r["gflops_per_s"] > 0


def test_profile_module_key_reads_flax_paths_and_the_pass():
  fwd = ("jit(loss_fn)/jvp(Deform3DTransformer)/block1/block1.pose_layers/joint_attn/"
         "joint_attn.attend/attn/attn.project/query/dot_general")
  bwd = fwd.replace("jvp(Deform3DTransformer)", "transpose(jvp(Deform3DTransformer))")
  assert step_profile.module_key(fwd) == ("fwd", "block*/pose_layers/joint_attn")
  assert step_profile.module_key(bwd, depth=5) == ("bwd", "block*/pose_layers/joint_attn/attend/attn")
  assert step_profile.module_key("jit(loss_fn)/reduce_sum") == ("other", "(model inputs and loss)")
  # The model's own methods on the way (its block loop) are not modules.
  looped = fwd.replace("/block1/", "/Deform3DTransformer.run_blocks/block1/")
  assert step_profile.module_key(looped) == ("fwd", "block*/pose_layers/joint_attn")


def test_profile_reads_a_gpu_trace_by_hlo_op():
  """On a GPU the kernels run on the device's processes and name their HLO instruction in
  ``args.hlo_op``; host-side spans (launches) must not be counted."""
  events = [
      {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "/host:CPU"}},
      {"ph": "M", "name": "process_name", "pid": 7, "args": {"name": "/device:GPU:0"}},
      {"ph": "X", "pid": 1, "name": "cuLaunchKernel", "dur": 5.0},
      {"ph": "X", "pid": 1, "name": "fusion.3", "dur": 9.0},
      {"ph": "X", "pid": 7, "name": "loop_add_fusion", "dur": 3.0,
       "args": {"hlo_op": "fusion.3", "hlo_module": "jit_step"}},
      {"ph": "X", "pid": 7, "name": "sm90_gemm", "dur": 4.0, "args": {"hlo_op": "dot.1"}},
  ]
  assert step_profile.device_events(events) == [("fusion.3", 3.0), ("dot.1", 4.0)]
  # XLA:CPU: no device process; the thunk events carry the instruction names.
  cpu = [{"ph": "X", "pid": 1, "name": "fusion.3", "dur": 2.0}, {"ph": "i", "name": "x"}]
  assert step_profile.device_events(cpu) == [("fusion.3", 2.0)]


@pytest.mark.slow
def test_accelerator_script_keeps_to_its_time(tmp_path):
  """``benchmarks/benchmark_accelerator.sh`` (the prepared device run) on CPU with the tiny model
  and a 40 s budget: every phase is started or reported as not started, the whole call ends
  within the budget (plus the kill grace), the environment is recorded."""
  import time
  env = dict(os.environ, BENCH_SIZE="tiny", BENCH_SPEC="embedded:variant=tiny",
             BENCH_BATCHES="2 3")
  t = time.perf_counter()
  proc = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "benchmark_accelerator.sh"),
                         str(tmp_path), "40"], capture_output=True, text=True, env=env)
  elapsed = time.perf_counter() - t
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert elapsed < 40 + 15
  timeline = (tmp_path / "timeline.log").read_text().splitlines()
  names = [line.split(":")[0] for line in timeline]
  assert names == ["model", "paper16", "paper32", "profile_fused", "profile_fast", "total"]
  assert "rc " in timeline[0]  # the first phase ran (and was cut: the tiny run takes minutes)
  assert "jax" in (tmp_path / "env.log").read_text()


@pytest.mark.slow
def test_profile_suite_attributes_the_step_to_modules(tmp_path):
  """``--suite profile`` on the tiny config: executed ops are found in the trace and joined with
  the HLO's module paths, forward and backward; the per-module and per-category times add up
  to the traced op time; the PNG is written."""
  plot = tmp_path / "profile.png"
  result = benchmark.profile_suite("tiny", "float32", reference_gflops=100.0, plot=str(plot),
                                   log=lambda s: None)
  modules = {(r["pass"], r["module"]) for r in result["modules"]}
  assert ("fwd", "block*/pose_layers/joint_attn") in modules
  assert ("bwd", "block*/pose_layers/joint_attn") in modules
  assert ("fwd", "block*/cross_attn") in modules and ("bwd", "block*/cross_attn") in modules
  total = result["op_ms_per_step"]
  assert 0 < total < 10 * result["step_ms"]
  assert abs(sum(r["ms"] for r in result["modules"]) - total) < 1e-6 * total
  assert abs(sum(r["ms"] for r in result["categories"]) - total) < 1e-6 * total
  assert {"matmul", "other"} <= {r["category"] for r in result["categories"]}
  assert result["pass_ms"]["fwd"] > 0 and result["pass_ms"]["bwd"] > 0
  assert 0 < result["ops_executed_per_step"] and 0 < result["xla_ops"]
  assert result["minor_faults_per_step"] >= 0
  assert abs(result["fraction_of_reference"] * 100.0 - result["gflops_per_s"]) < 1e-9
  assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  with pytest.raises(SystemExit, match="'huge'.*takes one of .*'embedded'"):
    benchmark.profile_suite("huge", "float32")


@pytest.mark.slow
def test_model_stats_command_reports_the_config_model(tmp_path):
  """``launch/model_stats.py`` (README): the tiny config's parameter count, as the initialised
  tree has it, forward FLOPs and the step's peak memory with and without remat."""
  import jax
  import numpy as np
  from configs.common import clip_shapes, load
  from deform3d.models import build_model
  out = tmp_path / "stats.json"
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "model_stats.py"),
                         "--configs", "embedded:variant=tiny", "--designs", "paper", "--batch",
                         "2", "--out", str(out)], capture_output=True, text=True, timeout=600,
                        cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  (row,) = json.loads(out.read_text())["rows"]
  config = load("embedded:variant=tiny")
  shapes = clip_shapes(config)
  params = jax.eval_shape(build_model(config.model).init, jax.random.key(0),
                          np.zeros((1,) + shapes["frames"], np.float32),
                          np.zeros((1,) + shapes["keypoints"], np.float32))["params"]
  assert row["params"] == sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
  assert row["gflops_per_clip"] > 0 and row["peak_mib"] > 0 and row["peak_mib_remat"] > 0
  assert f"| embedded:variant=tiny | paper | float32 | {row['params']:,} |" in proc.stdout


@pytest.mark.slow
def test_traffic_table_of_the_tiny_model(tmp_path):
  """``python -m benchmarks.traffic``: each part of block 0 compiled alone (forward and
  backward) with XLA's FLOPs and bytes; the parts nest (the block holds the deformable
  attention, which holds its bias + attention); the fused core's bytes by construction are
  below XLA's count for the materialized core; floors follow from the device figures."""
  from benchmarks import traffic
  out = tmp_path / "traffic.json"
  proc = subprocess.run([sys.executable, "-m", "benchmarks.traffic", "--configs",
                         "embedded:variant=tiny", "--batch", "2", "--out", str(out)],
                        capture_output=True, text=True, timeout=600, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = {r["module"]: r for r in json.loads(out.read_text())["configs"]["embedded:variant=tiny"]}
  for _, _, label in traffic.BLOCK_PARTS:
    assert rows[label]["gflop"] > 0 and rows[label]["gb"] > 0, label
  block, deform = rows["whole block"], rows["3D deformable attention (all)"]
  core = rows["  its position bias + attention"]
  assert block["gb"] > deform["gb"] > core["gb"] and block["gflop"] > deform["gflop"]
  xla = rows["attention core, XLA (bias, logits, weights stored)"]
  fused = rows["attention core, fused kernel (each array once)"]
  tiles = rows["attention core, fused kernel (with tile re-reads)"]
  assert fused["gb"] <= tiles["gb"] and fused["gb"] < xla["gb"]
  assert fused["gflop"] > xla["gflop"]  # the backward kernels recompute the logits
  rate, bandwidth = traffic.DEVICES["H100 SXM"]
  floor = block["floors"]["H100 SXM"]["ms"]
  assert floor == pytest.approx(max(block["gflop"] * 1e9 / rate, block["gb"] * 1e9 / bandwidth)
                                * 1e3)
  assert "| whole block |" in proc.stdout
