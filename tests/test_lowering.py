"""The lowering tier: the Trainer's real steps built for ``cuda`` and ``tpu`` on this CPU host.

Every config in ``configs/`` has its training and evaluation steps traced once and lowered for
both platforms (``deform3d.train.aot``), with the XLA attention and with the fused Pallas
kernel, in float32 and bfloat16, on one device and on eight with data-parallel and FSDP
parameters. The cases cover every pair of those settings (four configs x two cases) rather than
their product, which would take ten times as long. The module must show:

* the kernel's custom calls for its platform when ``attention_kernel`` is ``pallas`` or
  ``auto`` (Triton for ``cuda``, Mosaic ``tpu_custom_call`` for ``tpu``) and none with ``xla``;
* no interpret-mode loops (interpret mode lowers a kernel to ``while`` loops over its grid);
* on eight devices, eight partitions, the batch split eight ways and, with FSDP, parameters
  split too; the shard_map's reductions of the kernel's replicated ``w2`` gradient;
* no float64 anywhere; the training state donated (every leaf aliased to an output).

The eight-device meshes are libtpu's compile-only TPU devices (``aot.topology_mesh``): the
module lowered for ``cuda`` from them is the one eight GPUs would get (the device assignment is
not part of it), so no forced host devices or subprocess are needed. The micro config's training
steps are also compiled for a TPU topology, through ``launch/plan.py``.
"""
import re

import jax
import pytest

from configs.common import clip_shapes, load
from deform3d.train import aot
from deform3d.train.trainer import Trainer

pytest.importorskip("libtpu", reason="the TPU lowering needs libtpu: pip install -e '.[tpu]'")

# (config, attention_kernel, dtype, devices, param_sharding): every config twice; across the
# eight cases each kernel meets each dtype, each device count and each sharding.
CASES = [
    ("embedded", "pallas", "bfloat16", 1, "replicated"),
    ("embedded", "xla", "float32", 8, "fsdp"),
    ("ntu", "pallas", "bfloat16", 8, "fsdp"),
    ("ntu", "xla", "float32", 1, "replicated"),
    ("finegym", "pallas", "float32", 8, "replicated"),
    ("finegym", "xla", "bfloat16", 1, "replicated"),
    ("pennaction", "auto", "float32", 1, "replicated"),
    ("pennaction", "xla", "bfloat16", 8, "replicated"),
]
KERNEL_CALLS = {"cuda": "triton", "tpu": "mosaic_tpu"}


def _trainer(name, kernel, dtype, devices, param_sharding):
  config = load(name)
  config.model.attention_kernel = kernel
  config.model.dtype = dtype
  config.batch_size = devices  # one example per device
  config.param_sharding = param_sharding
  config.fsdp_min_size = 2**10  # the embedded model's arrays are all under the default 2**14
  topology = aot.topology_mesh("v5e:2x4")
  mesh = topology if devices == 8 else type(topology)(topology.devices[:1], topology.axis_names)
  return Trainer(config, mesh, clip_shapes(config))


def _check(facts, platform, kernel, trainer, kind):
  fused = kernel in ("pallas", "auto")
  calls = {k: v for k, v in facts.kernels.items() if v}
  if fused:
    # Forward: one kernel per deformable attention; training: two more for its backward.
    assert set(calls) == {KERNEL_CALLS[platform]}, (platform, calls)
  else:
    assert not calls, calls
  assert facts.while_loops == 0, "a while loop: a kernel in interpret mode?"
  assert not facts.float64
  devices = trainer.mesh.size
  assert facts.num_partitions == devices
  if kind == "train":
    assert facts.donated_args == len(jax.tree.leaves(trainer.abstract_state))
  else:
    assert facts.donated_args == 0


def _arguments(text):
  """``[(type, sharding)]`` of the main function's arguments: ``("8x4x32x32x3xui8",
  '[{"data"}, {}, {}, {}, {}]')`` (Shardy's per-dimension axes)."""
  main = text[text.index("func.func public @main"):]
  header = main[:main.index("{\n")].split(") -> (")[0]  # the arguments, not the results
  return re.findall(r"%arg\d+: tensor<([^>]*)> \{sdy\.sharding = #sdy\.sharding<@mesh, "
                    r"(\[[^\]]*\])>", header)


def _mlir_type(shape, dtype) -> str:
  names = {"uint8": "ui8", "float32": "f32", "int32": "i32", "bool": "i1", "bfloat16": "bf16"}
  return "x".join([str(d) for d in shape] + [names[str(dtype)]])


@pytest.mark.slow  # 10-40 s each on 2 cores: the full tier, not the quick one
@pytest.mark.parametrize("name,kernel,dtype,devices,param_sharding", CASES)
def test_steps_lower_for_cuda_and_tpu(name, kernel, dtype, devices, param_sharding):
  trainer = _trainer(name, kernel, dtype, devices, param_sharding)
  for kind in ("train", "eval"):
    texts = {p: lowered.as_text() for p, lowered in aot.lower(trainer, kind).items()}
    for platform, text in texts.items():
      _check(aot.module_facts(text), platform, kernel, trainer, kind)
    arguments = _arguments(texts["cuda"])
    split = [x for _, x in arguments if '"data"' in x]
    if devices == 8:
      assert 'sdy.mesh @mesh = <["data"=8]>' in texts["cuda"]
      # The clips (frames, keypoints) split over the 8 devices along their batch axis; with
      # FSDP, parameters and moments as well.
      batch = trainer.batch_specs()[kind]
      for field in ("frames", "keypoints"):
        want = _mlir_type(batch[field].shape, batch[field].dtype)
        got = [x for t, x in arguments if t == want]
        assert got and all(x.startswith('[{"data"}') for x in got), (field, want, got)
      if param_sharding == "fsdp":
        assert len(split) > len(batch)
      else:
        assert len(split) <= len(batch)
      if kernel != "xla" and kind == "train":
        # shard_map's sum over devices of the replicated w2's gradient (per deformable block).
        assert aot.module_facts(texts["tpu"]).collectives.get("all_reduce", 0) > 0
    else:
      assert '"data"=8' not in texts["cuda"]


def test_lowering_sees_a_kernel_in_interpret_mode():
  """The check above can fail: a kernel forced into interpret mode lowers to while loops."""
  import jax.numpy as jnp
  from deform3d.ops import fused_attention
  shapes = [(1, 2, 20, 8), (1, 2, 12, 8), (1, 2, 12, 8), (1, 20, 8), (1, 1, 12, 8), (8, 2)]
  args = [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]
  for variant, loops in ((None, False), ("interpret", True)):
    fn = jax.jit(lambda *a: fused_attention.deformable_attention(*a, variant=variant))
    facts = aot.module_facts(fn.trace(*args).lower(lowering_platforms=("cuda",)).as_text())
    assert (facts.while_loops > 0) == loops
    assert (facts.kernels["triton"] > 0) == (not loops)


def test_unknown_topology_and_cpu_mesh_for_tpu_are_refused_with_the_fix_named():
  with pytest.raises(ValueError, match=r"TPU topology 'v9z:2x2'.*names look like v5e:2x4"):
    aot.topology_mesh("v9z:2x2")
  config = load("embedded:variant=tiny")
  cpu = Trainer(config, aot.shd.make_mesh(jax.devices()[:1]), clip_shapes(config))
  with pytest.raises(ValueError, match=r"tpu lowering needs the Trainer on a mesh of TPU devices"):
    aot.lower(cpu, "eval", ("tpu",))
  with pytest.raises(ValueError, match="platform must be one of"):
    aot.lower(cpu, "eval", ("metal",))


@pytest.mark.heavy
def test_plan_command_compiles_for_a_tpu_topology_and_writes_memory_cost_and_largest_batch(
    tmp_path):
  """``launch/plan.py`` on the micro config (one deformable block) for a v5e 2x2 slice, XLA
  attention and the fused kernel: each training step compiled (not only lowered) by libtpu, so
  Mosaic accepts the kernel's blocks; per-chip memory, cost, roofline and the fit at half the
  batch read back."""
  import json
  import os
  import subprocess
  import sys
  out = tmp_path / "plan.json"
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run(
      [sys.executable, "launch/plan.py", "--config", "configs/embedded.py:variant=micro",
       "--topology", "v5e:2x2", "--batch", "64", "--kernels", "xla,pallas", "--out", str(out)],
      cwd=repo, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = json.loads(out.read_text())
  assert [r["attention_kernel"] for r in rows] == ["xla", "pallas"]
  for row in rows:
    assert row["chips"] == 4 and row["device_kind"] == "TPU v5 lite" and row["batch"] == 64
    assert 0 < row["memory_bytes"] < 16e9 and row["flops"] > 0 and row["bytes_accessed"] > 0
    bound = row["roofline"]
    assert bound["bound_s"] == max(bound["compute_s"], bound["memory_s"]) > 0
    assert row["largest_batch"] % 4 == 0
    assert row["largest_batch"] > 64  # the micro model at batch 64 is far from 16 GB per chip
  # Per deformable block, the kernel's forward, dq and dkv calls; none with XLA attention.
  assert (rows[0]["kernels"], rows[0]["kernel_io_bytes"]) == (0, 0)
  assert rows[1]["kernels"] == 3 and rows[1]["kernel_io_bytes"] > 0
  assert "roofline: >= " in proc.stdout and "the largest global batch" in proc.stdout
  assert "pallas / xla: memory" in proc.stdout
