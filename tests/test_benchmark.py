"""The benchmark script runs and reports every implementation (no timing assertions)."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "launch"))

import benchmark  # noqa: E402


def test_sampler_benchmark_reports_all_implementations(monkeypatch):
  monkeypatch.setattr(benchmark, "SIZES", [("tiny", 2, 2, 3, 4, 3, 5)])
  rows = benchmark.bench_sampler(repeats=1)
  impls = {r["impl"] for r in rows}
  assert {"jax/autodiff", "jax/onehot", "jax/sorted"} <= impls
  for r in rows:
    assert r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0 and r["compile_s"] >= 0


def test_model_benchmark_reports_jax_and_the_torch_reference():
  tiny = [s for s in benchmark.MODEL_SIZES if s[0] == "tiny"]  # configs/embedded.py:variant=tiny
  rows = benchmark.bench_model(repeats=1, sizes=tiny, dtypes=("float32",), log=lambda s: None)
  assert [r["impl"] for r in rows] == ["jax", "torch"]
  for r in rows:
    assert r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0 and r["clips_per_s_fwd_bwd"] > 0
    assert r["size"] == "tiny" and r["dtype"] == "float32"
  assert rows[0]["compile_s"] > 0 and rows[0]["fwd_bwd_speedup_of_jax"] == 1.0
  assert abs(rows[1]["fwd_bwd_speedup_of_jax"] - rows[1]["fwd_bwd_ms"] / rows[0]["fwd_bwd_ms"]) < 1e-9
