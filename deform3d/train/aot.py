"""The training program for another platform, from any host: lowered for ``cuda`` or ``tpu``,
compiled for a TPU topology, and read back (docs/accelerators.md).

A CPU host builds the same ``Trainer`` steps that a GPU or TPU job runs and

* lowers them for ``cuda`` or ``tpu`` (``lower``): the StableHLO module that XLA on that
  platform would compile, with the Pallas kernels lowered by the platform's own backend (Triton
  on GPU, Mosaic on TPU) and the mesh's shardings; ``module_facts`` reads back what it holds;
* compiles them for a TPU slice that is not there (``topology_mesh``, ``compile_step``): libtpu's
  compile-only topologies (``pip install -e '.[tpu]'``), which give the real per-chip memory and
  XLA's count of FLOPs and bytes (``plan``).

So a GPU or TPU job's lowering errors, memory and cost are known before any accelerator is
reserved (MaxText compiles its step for TPU topologies ahead of time in the same way).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Optional

import jax
import numpy as np
from jax.sharding import Mesh

from deform3d.train import sharding as shd

PLATFORMS = ("cpu", "cuda", "tpu")
# Per-chip peaks (dense bfloat16 FLOP/s, HBM bytes/s, HBM bytes) of the TPU generations that
# libtpu's compile-only topologies name; public figures of each chip's product page.
TPU_CHIPS = {
    "TPU v4": (275e12, 1.2e12, 32e9),
    "TPU v5 lite": (197e12, 819e9, 16e9),
    "TPU v5": (459e12, 2.76e12, 95e9),
    "TPU v6 lite": (918e12, 1.64e12, 32e9),
}


def topology_mesh(topology: str) -> Mesh:
  """A 1-D ``data`` mesh over the chips of a TPU topology such as ``"v5e:2x4"`` that need not
  exist: libtpu's compile-only devices (programs compile for them, they cannot run)."""
  import os
  from jax.experimental import topologies
  # Compile-only devices touch no TPU: several processes (pytest workers) may load libtpu at
  # once, which its lockfile otherwise refuses.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  try:
    desc = topologies.get_topology_desc(topology, platform="tpu")
  except Exception as e:  # noqa: BLE001 - libtpu missing, or a name it does not know
    raise ValueError(f"TPU topology {topology!r}: {e}. Install libtpu with "
                     "`pip install -e '.[tpu]'`; names look like v5e:2x4, v4:2x2x1, "
                     "v6e:2x2") from e
  return shd.make_mesh(desc.devices)


def step_args(trainer, kind: str) -> tuple:
  """The abstract arguments of a trainer's ``train`` or ``eval`` step (shapes, dtypes and the
  mesh's shardings of the config's global batch)."""
  batch = trainer.batch_specs()[kind]
  if kind == "train":
    return trainer.abstract_state, batch
  return trainer.abstract_state.params, batch


def lower(trainer, kind: str, platforms=("cuda", "tpu")) -> dict:
  """``{platform: jax.stages.Lowered}``: the trainer's ``train`` or ``eval`` step traced once
  and lowered for each of ``platforms`` (``cpu``, ``cuda``, ``tpu``), whatever this host has.

  A ``tpu`` lowering needs the trainer's mesh to be of TPU devices (``topology_mesh``): Pallas
  checks its blocks for the chip it lowers for. Any mesh serves ``cuda`` and ``cpu``; the
  module does not hold the device assignment, so eight TPU topology devices give the module
  that eight GPUs would get."""
  for platform in platforms:
    if platform not in PLATFORMS:
      raise ValueError(f"lower: platform must be one of {PLATFORMS}, got {platform!r}")
  mesh_platform = trainer.mesh.devices.flat[0].platform
  if "tpu" in platforms and mesh_platform != "tpu":
    raise ValueError("lower: a tpu lowering needs the Trainer on a mesh of TPU devices, e.g. "
                     "aot.topology_mesh('v5e:2x4') (libtpu: pip install -e '.[tpu]'); got "
                     f"{mesh_platform} devices")
  step = {"train": trainer.train_step, "eval": trainer.eval_step}[kind]
  with jax.set_mesh(trainer.mesh):
    traced = step.trace(*step_args(trainer, kind))
    return {p: traced.lower() if p == mesh_platform else traced.lower(lowering_platforms=(p,))
            for p in platforms}


@dataclasses.dataclass
class ModuleFacts:
  """What a lowered step's StableHLO says: the Pallas kernels by backend, the ``while`` loops
  (interpret mode lowers a kernel to loops over its grid), the explicit collectives, whether
  any value is float64, the donated arguments and the number of partitions (devices)."""
  kernels: dict
  while_loops: int
  collectives: dict
  float64: bool
  donated_args: int
  num_partitions: int


_COLLECTIVES = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all",
                "collective_permute")


def module_facts(text: str) -> ModuleFacts:
  """Reads a lowered module's text (``Lowered.as_text()``)."""
  kernels = {
      "triton": text.count("custom_call @__gpu$xla.gpu.triton"),
      "mosaic_gpu": text.count("custom_call @mosaic_gpu"),
      "mosaic_tpu": text.count("custom_call @tpu_custom_call"),
  }
  collectives = {c: len(re.findall(rf"stablehlo\.{c}\b|\"stablehlo\.{c}\"", text))
                 for c in _COLLECTIVES}
  partitions = re.search(r"mhlo\.num_partitions = (\d+)", text)
  return ModuleFacts(
      kernels=kernels,
      while_loops=text.count("stablehlo.while"),
      collectives={k: v for k, v in collectives.items() if v},
      float64=bool(re.search(r"\bf64\b|\bcomplex<f64>", text)),
      donated_args=len(re.findall(r"tf\.aliasing_output|jax\.buffer_donor = true", text)),
      num_partitions=int(partitions.group(1)) if partitions else 1)


# -- compiled plans --------------------------------------------------------------------------

def _kernel_io_bytes(hlo_text: str) -> int:
  """Bytes of the inputs and outputs of every Pallas kernel (``tpu_custom_call``) in a compiled
  HLO module: what the kernels read and write at least once, which XLA's own count leaves out
  unless the kernel states a cost."""
  total = 0
  for line in hlo_text.splitlines():
    if 'custom_call_target="tpu_custom_call"' not in line:
      continue
    lhs, _, rhs = line.partition(" custom-call(")
    shapes = re.findall(r"(bf16|f32|f16|s32|u32|s8|u8|pred)\[([\d,]*)\]", lhs.split("=", 1)[1])
    operands = re.findall(r"(bf16|f32|f16|s32|u32|s8|u8|pred)\[([\d,]*)\]",
                          rhs.split("), ")[0])
    for dtype, dims in shapes + operands:
      size = int(np.prod([int(x) for x in dims.split(",") if x], dtype=np.int64))
      total += size * {"bf16": 2, "f16": 2, "f32": 4, "s32": 4, "u32": 4, "s8": 1, "u8": 1,
                       "pred": 1}[dtype]
  return total


@dataclasses.dataclass
class Plan:
  """A compiled step on one chip of a mesh: memory and XLA's cost, per chip."""
  platform: str
  device_kind: str
  chips: int
  batch: int
  compile_s: float
  argument_bytes: int
  output_bytes: int
  temp_bytes: int
  alias_bytes: int
  flops: float
  bytes_accessed: float
  kernel_io_bytes: int
  kernels: int

  @property
  def memory_bytes(self) -> int:
    """Peak per-chip memory of the step: arguments + outputs + temporaries, less what donation
    lets outputs share with arguments."""
    return self.argument_bytes + self.output_bytes + self.temp_bytes - self.alias_bytes

  def roofline(self) -> Optional[dict]:
    """The step's lower bounds on this chip: compute at peak FLOP/s, traffic at peak HBM
    bandwidth (XLA's bytes accessed; with ``kernel_io_bytes`` where XLA does not count the
    kernels), the larger of the two, and clips/s per chip at that bound."""
    peak = TPU_CHIPS.get(self.device_kind)
    if peak is None:
      return None
    flops_s, bytes_s, hbm = peak
    compute = self.flops / flops_s
    traffic = self.bytes_accessed / bytes_s
    bound = max(compute, traffic)
    return {"compute_s": compute, "memory_s": traffic, "bound_s": bound,
            "bound": "memory" if traffic > compute else "compute",
            "clips_per_s_per_chip": self.batch / self.chips / bound if bound else None,
            "hbm_bytes": hbm}


def compile_step(trainer, kind: str = "train"):
  """``(compiled, seconds)``: the trainer's step compiled for its mesh's devices (a TPU topology
  from ``topology_mesh``, or this host's)."""
  import time
  args = step_args(trainer, kind)
  step = {"train": trainer.train_step, "eval": trainer.eval_step}[kind]
  start = time.perf_counter()
  with jax.set_mesh(trainer.mesh):
    compiled = step.trace(*args).lower().compile()
  return compiled, time.perf_counter() - start


def plan(trainer, kind: str = "train") -> Plan:
  """Compiles the trainer's step for its mesh and reads back its per-chip memory and cost."""
  compiled, seconds = compile_step(trainer, kind)
  memory = compiled.memory_analysis()
  cost = compiled.cost_analysis() or {}
  if isinstance(cost, (list, tuple)):  # one entry per program on some versions
    cost = cost[0] if cost else {}
  text = compiled.as_text()
  device = trainer.mesh.devices.flat[0]
  return Plan(
      platform=device.platform, device_kind=device.device_kind, chips=trainer.mesh.size,
      batch=trainer.config.batch_size, compile_s=seconds,
      argument_bytes=int(memory.argument_size_in_bytes),
      output_bytes=int(memory.output_size_in_bytes),
      temp_bytes=int(memory.temp_size_in_bytes),
      alias_bytes=int(memory.alias_size_in_bytes),
      flops=float(cost.get("flops", 0.0)), bytes_accessed=float(cost.get("bytes accessed", 0.0)),
      kernel_io_bytes=_kernel_io_bytes(text),
      kernels=text.count('custom_call_target="tpu_custom_call"'))
