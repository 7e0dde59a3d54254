"""Input-pipeline benchmark: ``python launch/input_benchmark.py [--clips 24] [--rounds 3]
[--datasets paper,embedded] [--frames_dtypes uint8:device,uint8:host,float32] [--work_dir DIR]
[--out input.json]``; ``taskset -c 0`` in front
measures one core. The harness is ``data_pipelines/bench.py`` (its docstring says what is run).
"""
import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--clips", type=int, default=24, help="clips per round")
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--datasets", default="paper,embedded")
  parser.add_argument("--work_dir", default=None, help="where the records are built (kept)")
  parser.add_argument("--frames_dtypes", default=None,
                      help="pipeline variants, rounds alternated: uint8 or float32, uint8 with "
                           "where the crop is resized (uint8:device, uint8:host); e.g. "
                           "uint8:device,uint8:host (default: the config's own)")
  parser.add_argument("--service_workers", default=None,
                      help="e.g. 1,2: also read through tf.data service with that many worker "
                           "processes on this machine (data_pipelines/bench.service_clips_per_s)")
  parser.add_argument("--out", default=None)
  args = parser.parse_args()
  from data_pipelines import bench
  work = args.work_dir or tempfile.mkdtemp(prefix="input_bench_")
  dtypes = args.frames_dtypes.split(",") if args.frames_dtypes else None
  result = bench.run(work, args.datasets.split(","), args.clips, args.rounds,
                     frames_dtypes=dtypes)
  for n in (args.service_workers.split(",") if args.service_workers else []):
    for name in args.datasets.split(","):
      row = bench.service_clips_per_s(os.path.join(work, name), name, int(n), args.clips,
                                      args.rounds)
      print(f"{name} via tf.data service, {n} worker process(es): {row['median']:.2f} clips/s "
            f"(min {row['min']:.2f}, max {row['max']:.2f})")
      result.setdefault("service", []).append(row)
  if args.out:
    with open(args.out, "w") as fh:
      json.dump(result, fh, indent=1)


if __name__ == "__main__":
  main()
