"""Input-pipeline benchmark: clips/s of the training pipeline and the time per clip by stage.

``python -m benchmarks.input_bench [--clips 24] [--rounds 3] [--datasets paper,embedded]
[--frames_dtypes uint8:device,uint8:host,float32] [--work_dir DIR] [--out input.json]`` from the
repository root (this module is the harness and its command line; ``taskset -c 0`` in front
measures one core). Two datasets:

* ``paper``: records written by the project's writer from the real NTU RGB+D clip
  ``tests/data/ntu_sample.avi`` (stored at short side 256, every frame, JPEG quality 92, two
  persons of 25 joints drawn inside the frame), read as ``configs/ntu.py`` reads its data:
  32 frames, 224 px, random crops of 0.7-1.0 x the short side, flips, ``cache=False``, and
  the crops resized in the jitted step (``resize="device"``: the host decodes and crops);
* ``embedded``: the embedded dataset's generator (48 px frames stored at 56), read as
  ``configs/embedded.py`` does.

``clips_per_s`` runs ``make_dataset`` (batch 1, ``AUTOTUNE`` parallelism) over ``--clips`` clips
per round, each round a fresh pipeline after ``--clips`` warm-up clips; the process's CPU
affinity sets the cores it may use (``taskset -c 0`` for one). ``stages`` times, one call after
another, one ``tf.function`` per stage prefix on the same records: parse the record; + decode
the sampled frames; + crop; + the host's antialiased resize (``crop_resize``) or a plain
bilinear one (``essential``: decode, crop and the cheapest resize, the floor a host pipeline
could reach); the whole ``_process`` (flip, keypoints, and normalization or rounding to uint8,
or with ``resize="device"`` the padded crop). The differences are the stages' costs per clip.
Also per clip: ``read`` (the training record stream alone: files, shuffle, the per-epoch seeding
that keeps the stream a function of ``(seed, position)``) and ``to_numpy`` (copying a clip's
frames out of TensorFlow). ``frames_dtypes=("uint8:device", "uint8:host", "float32")`` measures
pipeline variants side by side, rounds alternated (``uint8`` alone: the config's resize).
``device_resize`` reports what the step's resize costs per clip
(``benchmarks.timing.resize_cost``: its FLOPs by XLA's count, and its time on this process's
CPU; the accelerator's is not measured here).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import tempfile
import time
from typing import Callable

import numpy as np

if __name__ == "__main__":
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before TensorFlow loads
import tensorflow as tf  # noqa: E402

from data_pipelines import input_pipeline, records  # noqa: E402
from data_pipelines.datasets import common  # noqa: E402
from data_pipelines.skeletons import LAYOUTS, flip_permutation  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "tests", "data", "ntu_sample.avi")

# How each dataset is read (the configs' values).
SETTINGS = {
    "paper": dict(num_frames=32, image_size=224, layout="ntu25", max_persons=2,
                  crop_scale=(0.7, 1.0), frames_dtype="uint8", resize="device", crop_pad=256),
    "embedded": dict(num_frames=8, image_size=48, layout="coco17", max_persons=2,
                     crop_scale=(0.8, 1.0), frames_dtype="uint8", resize="host"),
}


def build_paper_records(out_dir: str, copies: int = 8, seed: int = 0) -> str:
  """``copies`` records of ``ntu_sample.avi`` at short side 256 with drawn two-person poses."""
  frames, fps = common.read_video(SAMPLE)
  rng = np.random.default_rng(seed)
  j = len(LAYOUTS["ntu25"])
  h, w = frames.shape[1:3]
  kp = np.stack([rng.uniform(0, w, (2, frames.shape[0], j)),
                 rng.uniform(0, h, (2, frames.shape[0], j))], -1).astype(np.float32)
  sc = np.ones((2, frames.shape[0], j), np.float32)
  frames, kp, sc = common.finish(frames, kp, sc, fps, common.FrameOptions(short_side=256))
  samples = (records.Sample(frames, kp, sc, i % 3, f"ntu{i}") for i in range(copies))
  records.write_split(out_dir, "train", samples, num_shards=2, num_classes=3, num_joints=j)
  return out_dir


def build_embedded_records(out_dir: str, clips: int = 64) -> str:
  from data_pipelines import embedded
  embedded.build(out_dir, sizes={"train": (clips, 2, 11)}, verbose=False)
  return out_dir


def _variant(name: str, variant=None) -> tuple:
  """``"uint8"``, ``"float32"``, or with where the crop is resized, ``"uint8:host"`` /
  ``"uint8:device"`` -> ``(frames_dtype, resize)``; ``None``: the config's own. Float frames are
  always resized on the host."""
  s = SETTINGS[name]
  if variant is None:
    return s["frames_dtype"], s["resize"]
  dtype, _, where = variant.partition(":")
  return dtype, where or (s["resize"] if dtype == "uint8" else "host")


def _dataset(data_dir: str, name: str, seed: int = 0, variant=None,
             service=None) -> tf.data.Dataset:
  s = SETTINGS[name]
  joints = LAYOUTS[s["layout"]]
  frames_dtype, resize = _variant(name, variant)
  return input_pipeline.make_dataset(
      data_dir, "train", num_frames=s["num_frames"], image_size=s["image_size"],
      num_joints=len(joints), batch_size=1, train=True, seed=seed,
      flip_perm=flip_permutation(joints), crop_scale=s["crop_scale"], cache=False,
      max_persons=s["max_persons"], shuffle_buffer=16,
      frames_dtype=frames_dtype, service=service, resize=resize, crop_pad=s.get("crop_pad"))


def _round_rate(ds: tf.data.Dataset, clips: int) -> float:
  """Clips/s of a fresh pipeline of ``ds`` over ``clips`` clips after ``clips`` warm-up clips
  (threads started, files open, autotuning begun); the pipeline is gone before the next one
  starts, so no pipeline works ahead while another is timed."""
  it = iter(ds.as_numpy_iterator())
  for _ in range(clips):
    next(it)
  t = time.perf_counter()
  for _ in range(clips):
    next(it)
  rate = clips / (time.perf_counter() - t)
  del it
  gc.collect()
  return rate


def clips_per_s(data_dir: str, name: str, clips: int = 24, rounds: int = 3,
                log: Callable[[str], None] = print, frames_dtypes=None) -> dict:
  """Clips/s of the training pipeline over ``rounds`` rounds of ``clips`` clips (after a
  warm-up round), with the cores this process may use. With several ``frames_dtypes`` (e.g.
  ``("uint8", "float32")``) one pipeline each, their rounds alternated; the row is the first
  one's, with ``by_frames_dtype`` giving each one's rates."""
  dtypes = tuple(frames_dtypes or (":".join(_variant(name)),))
  datasets = {d: _dataset(data_dir, name, variant=d) for d in dtypes}
  rates = {d: [] for d in dtypes}
  for r in range(rounds):
    for d, ds in datasets.items():
      rates[d].append(_round_rate(ds, clips))
      log(f"{name} ({d} frames): round {r + 1}/{rounds}: {rates[d][-1]:.2f} clips/s")
  summary = {d: {"clips_per_s": v, "median": statistics.median(v), "min": min(v),
                 "max": max(v)} for d, v in rates.items()}
  return {"dataset": name, "cores": len(os.sched_getaffinity(0)), "clips_per_round": clips,
          "frames_dtype": dtypes[0], **summary[dtypes[0]], "by_frames_dtype": summary}


def service_clips_per_s(data_dir: str, name: str, workers: int, clips: int = 24,
                        rounds: int = 3, log: Callable[[str], None] = print) -> dict:
  """Clips/s of the training pipeline read through tf.data service: a dispatcher in this
  process and ``workers`` worker processes (``launch/data_service.py worker``) on this machine.
  Each round is a fresh stream (a job of its own) after ``clips`` warm-up clips."""
  import subprocess
  import sys
  from data_pipelines import service
  dispatcher = service.start_dispatcher()
  target = dispatcher.target
  script = os.path.join(ROOT, "launch", "data_service.py")
  procs = [subprocess.Popen([sys.executable, script, "worker", "--dispatcher",
                             service.address(target)], stdout=subprocess.PIPE, text=True)
           for _ in range(workers)]
  try:
    for p in procs:
      p.stdout.readline()  # "serving"
    ds = _dataset(data_dir, name, service=target)
    rates = []
    for r in range(rounds):
      rates.append(_round_rate(ds, clips))
      log(f"{name} via tf.data service, {workers} worker(s): round {r + 1}/{rounds}: "
          f"{rates[-1]:.2f} clips/s")
  finally:
    for p in procs:
      p.kill()
      p.wait(timeout=30)
    dispatcher.stop()
  return {"dataset": name, "workers": workers, "clips_per_round": clips, "clips_per_s": rates,
          "median": statistics.median(rates), "min": min(rates), "max": max(rates)}


def stages(data_dir: str, name: str, clips: int = 8, variant=None) -> dict:
  """Milliseconds per clip of each stage prefix, in one thread (see the module docstring), for
  the pipeline ``variant`` (``_variant``)."""
  s = SETTINGS[name]
  frames_dtype, resize = _variant(name, variant)
  num_joints = len(LAYOUTS[s["layout"]])
  files = input_pipeline.split_files(data_dir, "train")
  serialized = list(tf.data.TFRecordDataset(files).take(clips))
  features = input_pipeline._FEATURES
  t_frames, size_out = s["num_frames"], s["image_size"]

  def sampled(ex):
    jpegs = tf.sparse.to_dense(ex["video/frames"])
    idx = input_pipeline.frame_indices(tf.shape(jpegs)[0], t_frames,
                                       tf.fill([1, t_frames], 0.5))
    return tf.gather(jpegs, tf.reshape(idx, [-1]))

  def parse(raw):
    ex = tf.io.parse_single_example(raw, features)
    return tf.size(sampled(ex))

  def decode(raw):
    ex = tf.io.parse_single_example(raw, features)
    return tf.map_fn(lambda x: tf.io.decode_jpeg(x, channels=3), sampled(ex),
                     fn_output_signature=tf.uint8)

  def decode_crop(raw):
    frames = decode(raw)
    h, w = tf.shape(frames)[1], tf.shape(frames)[2]
    size = tf.cast(tf.cast(tf.minimum(h, w), tf.float32) * 0.85, tf.int32)
    return frames[:, (h - size) // 2:(h - size) // 2 + size, (w - size) // 2:(w - size) // 2 + size]

  def crop_resize(raw):
    return tf.image.resize(tf.cast(decode_crop(raw), tf.float32), [size_out, size_out],
                           antialias=True)

  def essential(raw):  # the least a host resize can cost: bilinear without antialiasing
    return tf.image.resize(tf.cast(decode_crop(raw), tf.float32), [size_out, size_out],
                           antialias=False)

  def whole(raw):
    return input_pipeline._process(
        raw, tf.constant(0, tf.int64), num_frames=t_frames, image_size=size_out,
        num_joints=num_joints, train=True, num_clips=1, seed=0,
        flip_perm=list(range(num_joints)), crop_scale=s["crop_scale"],
        max_persons=s["max_persons"], frames_dtype=frames_dtype, resize=resize,
        crop_pad=s.get("crop_pad"))["frames"]

  out = {}
  # Reading: the training record stream alone (files, shuffle, the per-epoch seeding).
  stream = input_pipeline._train_records(
      files, 0, 1, seed=0, shuffle_buffer=16, cache=False, start_position=0,
      counts=input_pipeline.record_counts(data_dir, "train", files)).as_numpy_iterator()
  next(stream)
  t = time.perf_counter()
  for _ in range(4 * clips):
    next(stream)
  out["read"] = (time.perf_counter() - t) / (4 * clips) * 1e3
  # The batch as the trainer gets it: the frames copied out of TensorFlow.
  one = next(iter(_dataset(data_dir, name, variant=variant).take(1)))
  t = time.perf_counter()
  for _ in range(clips):
    np.array(one["frames"])
  out["to_numpy"] = (time.perf_counter() - t) / clips * 1e3
  for stage, fn in (("parse", parse), ("decode", decode), ("decode_crop", decode_crop),
                    ("crop_resize", crop_resize), ("essential", essential), ("whole", whole)):
    f = tf.function(fn)
    f(serialized[0])  # trace
    times = []
    for _ in range(3):
      t = time.perf_counter()
      for raw in serialized:
        np.asarray(f(raw))
      times.append((time.perf_counter() - t) / len(serialized) * 1e3)
    out[stage] = statistics.median(times)
  out["decode_only"] = out["decode"] - out["parse"]
  out["crop_resize_only"] = out["crop_resize"] - out["decode"]
  out["bilinear_resize_only"] = out["essential"] - out["decode_crop"]
  # What _process does beyond decoding, cropping (and, on the host, resizing).
  out["rest"] = out["whole"] - (out["decode_crop"] if resize == "device" else out["crop_resize"])
  return out


def run(work_dir: str, datasets=("paper", "embedded"), clips: int = 24, rounds: int = 3,
        log: Callable[[str], None] = print, frames_dtypes=None) -> dict:
  """Builds the records under ``work_dir`` (once) and measures each dataset (each of
  ``frames_dtypes`` alternated; default: the configs' own)."""
  result = {}
  for name in datasets:
    data_dir = os.path.join(work_dir, name)
    if not os.path.exists(os.path.join(data_dir, "train.json")):
      (build_paper_records if name == "paper" else build_embedded_records)(data_dir)
    row = clips_per_s(data_dir, name, clips, rounds, log, frames_dtypes)
    row["stages_ms_per_clip"] = stages(data_dir, name, variant=row["frames_dtype"])
    if any(_variant(name, d)[1] == "device" for d in row["by_frames_dtype"]):
      # The jitted step's share of resize="device" for one clip, on this process's JAX device.
      from benchmarks.timing import resize_cost
      s = SETTINGS[name]
      cost = row["device_resize"] = resize_cost(1, s["num_frames"], s["crop_pad"],
                                                s["image_size"])
      log(f"{name}: the step's resize, per clip: {cost['gflop']:.3g} GFLOP, "
          f"{cost['ms']['median']:.1f} ms on this CPU")
    for d, r in row["by_frames_dtype"].items():
      log(f"{name} ({d} frames): {r['median']:.2f} clips/s (min {r['min']:.2f}, max "
          f"{r['max']:.2f}) on {row['cores']} core(s)")
      if d != row["frames_dtype"]:
        r["stages_ms_per_clip"] = stages(data_dir, name, variant=d)
      else:
        r["stages_ms_per_clip"] = row["stages_ms_per_clip"]
      log(f"{name} ({d} frames) per clip: " + ", ".join(
          f"{k} {v:.1f} ms" for k, v in r["stages_ms_per_clip"].items()))
    result[name] = row
  return result


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
                           "processes on this machine (service_clips_per_s)")
  parser.add_argument("--out", default=None)
  args = parser.parse_args()
  work = args.work_dir or tempfile.mkdtemp(prefix="input_bench_")
  dtypes = args.frames_dtypes.split(",") if args.frames_dtypes else None
  result = run(work, args.datasets.split(","), args.clips, args.rounds, frames_dtypes=dtypes)
  for n in (args.service_workers.split(",") if args.service_workers else []):
    for name in args.datasets.split(","):
      row = service_clips_per_s(os.path.join(work, name), name, int(n), args.clips,
                                args.rounds)
      print(f"{name} via tf.data service, {n} worker process(es): {row['median']:.2f} clips/s "
            f"(min {row['min']:.2f}, max {row['max']:.2f})")
      result.setdefault("service", []).append(row)
  if args.out:
    with open(args.out, "w") as fh:
      json.dump(result, fh, indent=1)


if __name__ == "__main__":
  main()
