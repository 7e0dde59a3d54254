"""The benchmark harness, kept out of the installed packages (``deform3d``, ``data_pipelines``,
``configs``): nothing there imports it. Run its command lines from the repository root, e.g.
``python -m benchmarks.suites``, ``python -m benchmarks.compile_time``,
``python -m benchmarks.input_bench``, ``python -m benchmarks.traffic``,
``bash benchmarks/benchmark_accelerator.sh``."""
