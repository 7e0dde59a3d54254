r"""Compile a config's training step for a TPU slice (or this host) and print its plan.

  python launch/plan.py --config configs/ntu.py --topology v5e:2x4 --batch 64
  python launch/plan.py --config configs/ntu.py --topology v5e:2x4 --batch 64 \
      --kernels xla,pallas --out plan.json
  python launch/plan.py --config configs/embedded.py --topology cpu --batch 8

The step is the Trainer's own (AdamW, donated state, the config's sharding), compiled by XLA
for the topology's chips with libtpu's compile-only devices (``pip install -e '.[tpu]'``; no TPU
needed) or for this host's devices (``--topology cpu``). Printed per chip: the memory XLA plans
(arguments + outputs + temporaries - donated), FLOPs and bytes accessed (XLA's count, with the
Pallas kernels' stated costs), the inputs and outputs of the kernels, the roofline bound on the
step time at the chip's peak FLOP/s and HBM bandwidth, and the largest batch that fits in the
chip's HBM (from memory at ``--batch`` and at half of it, linear in the batch; ``--no-fit`` skips
the second compile). ``--kernels`` puts attention paths side by side (``xla``, ``pallas``).
docs/accelerators.md has the table for the paper configs.
"""
import json
import sys

from absl import app, flags

from configs.common import clip_shapes, load
from deform3d.train import aot, sharding
from deform3d.train.trainer import Trainer

FLAGS = flags.FLAGS
flags.DEFINE_string("config", None, "config file[:arg], as for launch/train.py", required=True)
flags.DEFINE_string("topology", "v5e:2x4", "TPU topology (v5e:2x4, v4:2x2x1, v6e:2x2, ...) or "
                    "'cpu' for this host's devices")
flags.DEFINE_integer("batch", None, "global batch (default: the config's)")
flags.DEFINE_string("kernels", "", "comma-separated attention_kernel values to compare "
                    "(default: the config's)")
flags.DEFINE_string("dtype", "", "model.dtype override (float32, bfloat16)")
flags.DEFINE_string("param_sharding", "", "replicated or fsdp (default: the config's)")
flags.DEFINE_bool("fit", True, "also compile at half the batch to estimate the largest batch")
flags.DEFINE_string("out", "", "write the rows as JSON here")


def _trainer(config, mesh):
  return Trainer(config, mesh, clip_shapes(config))


def _config(kernel, batch):
  config = load(FLAGS.config.split("/")[-1])
  if kernel:
    config.model.attention_kernel = kernel
  if FLAGS.dtype:
    config.model.dtype = FLAGS.dtype
  if FLAGS.param_sharding:
    config.param_sharding = FLAGS.param_sharding
  if batch:
    config.batch_size = batch
  return config


def _gb(x):
  return f"{x / 1e9:.2f} GB"


def plan_row(kernel: str, mesh) -> dict:
  config = _config(kernel, FLAGS.batch)
  batch = config.batch_size
  if batch % mesh.size:
    raise app.UsageError(f"--batch {batch} is not divisible by the {mesh.size} chips")
  print(f"[{kernel or config.model.attention_kernel}] compiling the train step at batch {batch} "
        f"on {mesh.size} x {mesh.devices.flat[0].device_kind} ...", flush=True)
  p = aot.plan(_trainer(config, mesh))
  row = {"config": FLAGS.config, "topology": FLAGS.topology,
         "attention_kernel": config.model.attention_kernel, "dtype": config.model.dtype,
         "param_sharding": config.param_sharding, "batch": batch, "chips": p.chips,
         "device_kind": p.device_kind, "compile_s": round(p.compile_s, 1),
         "memory_bytes": p.memory_bytes, "temp_bytes": p.temp_bytes,
         "argument_bytes": p.argument_bytes, "flops": p.flops,
         "bytes_accessed": p.bytes_accessed, "kernel_io_bytes": p.kernel_io_bytes,
         "kernels": p.kernels}
  roof = p.roofline()
  if roof:
    row["roofline"] = roof
  print(f"  compiled in {p.compile_s:.0f} s; per chip: memory {_gb(p.memory_bytes)} "
        f"(temporaries {_gb(p.temp_bytes)}), {p.flops / 1e12:.3f} TFLOP, "
        f"{_gb(p.bytes_accessed)} accessed (kernels' inputs and outputs "
        f"{_gb(p.kernel_io_bytes)}, {p.kernels} kernel calls)", flush=True)
  if roof:
    print(f"  roofline: >= {roof['bound_s'] * 1e3:.1f} ms per step ({roof['bound']}-bound: "
          f"compute {roof['compute_s'] * 1e3:.1f} ms, HBM {roof['memory_s'] * 1e3:.1f} ms); "
          f"<= {roof['clips_per_s_per_chip']:.1f} clips/s per chip", flush=True)
  if FLAGS.fit and batch // 2 >= mesh.size and (batch // 2) % mesh.size == 0:
    half = aot.plan(_trainer(_config(kernel, batch // 2), mesh))
    per_clip = (p.memory_bytes - half.memory_bytes) / (batch - batch // 2)
    fixed = p.memory_bytes - per_clip * batch
    row["memory_per_clip_bytes"] = per_clip
    if roof and per_clip > 0:
      fits = int((roof["hbm_bytes"] - fixed) / per_clip) // mesh.size * mesh.size
      row["largest_batch"] = fits
      print(f"  memory {_gb(per_clip)} per clip + {_gb(fixed)}: the largest global batch in "
            f"{_gb(roof['hbm_bytes'])} of HBM per chip is about {fits} (linear fit of batch "
            f"{batch // 2} and {batch})", flush=True)
    else:
      row["largest_batch"] = None
      print(f"  memory does not grow from batch {batch // 2} to {batch}: no estimate of the "
            "largest batch (try a larger --batch)", flush=True)
  return row


def main(argv):
  del argv
  if FLAGS.topology == "cpu":
    mesh = sharding.make_mesh()
  else:
    mesh = aot.topology_mesh(FLAGS.topology)
  kernels = [k for k in FLAGS.kernels.split(",") if k] or [""]
  rows = []
  for kernel in kernels:
    rows.append(plan_row(kernel, mesh))
    if FLAGS.out:  # each row as it is measured: a long compile killed later loses only itself
      with open(FLAGS.out, "w") as fh:
        json.dump(rows, fh, indent=1)
  if len(rows) == 2:
    a, b = rows
    print(f"{b['attention_kernel']} / {a['attention_kernel']}: memory "
          f"{b['memory_bytes'] / a['memory_bytes']:.2f}x, bytes accessed "
          f"{b['bytes_accessed'] / a['bytes_accessed']:.2f}x")
  return 0


if __name__ == "__main__":
  sys.exit(app.run(main))
