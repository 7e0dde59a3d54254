"""Device mesh and shardings: a 1-D ``data`` mesh; params replicated or FSDP-sharded."""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA = "data"


def make_mesh(devices=None) -> Mesh:
  devices = np.asarray(devices if devices is not None else jax.devices())
  return Mesh(devices.reshape(-1), (DATA,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over ``data``."""
  return NamedSharding(mesh, P(DATA))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def param_sharding(tree, mesh: Mesh, mode: str, min_size: int = 2**14):
  """Sharding for every leaf of ``tree`` (arrays or ShapeDtypeStructs).

  ``replicated``: every device holds everything. ``fsdp``: each array of >= ``min_size`` elements is
  split over ``data`` along its largest axis divisible by the mesh size (others replicated).
  """
  if mode not in ("replicated", "fsdp"):
    raise ValueError(f"param_sharding must be 'replicated' or 'fsdp', got {mode!r}")
  n = mesh.shape[DATA]

  def spec(path, x):
    shape = getattr(x, "shape", ())
    if mode == "replicated" or n == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
      return replicated(mesh)
    # Stacked block parameters (``stage{s}/...``) keep their leading layer axis whole: the
    # scan slices it one layer at a time.
    stacked = any(str(getattr(k, "key", "")).startswith("stage") for k in path)
    for axis in np.argsort(shape)[::-1]:
      if stacked and axis == 0:
        continue
      if shape[axis] % n == 0:
        parts = [None] * len(shape)
        parts[axis] = DATA
        return NamedSharding(mesh, P(*parts))
    return replicated(mesh)

  return jax.tree_util.tree_map_with_path(spec, tree)


def global_batch(batch: dict, mesh: Mesh) -> dict:
  """Process-local NumPy batch -> global ``jax.Array``s sharded over ``data``.

  Non-numeric fields (e.g. string ids) are dropped.
  """
  sharding = batch_sharding(mesh)
  out = {}
  for k, v in batch.items():
    if v.dtype.kind in "biuf":
      out[k] = jax.make_array_from_process_local_data(sharding, v)
  return out
