"""Building the model from a config and reading its attention maps."""
from __future__ import annotations

from typing import Any, Mapping

import functools

import flax
import jax
import jax.numpy as jnp

from deform3d.models.model import Deform3DTransformer

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def build_model(model_config: Mapping[str, Any]) -> Deform3DTransformer:
  """``Deform3DTransformer`` from a mapping (e.g. ``config.model``); ``dtype`` may be a string.

  Unknown keys raise a ``TypeError`` naming them; lists become tuples (module fields must be
  hashable).
  """
  kwargs = dict(model_config)
  dtype = kwargs.pop("dtype", "float32")
  if isinstance(dtype, str):
    if dtype not in DTYPES:
      raise ValueError(f"model.dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    dtype = DTYPES[dtype]
  fields = set(Deform3DTransformer.__dataclass_fields__) - {"parent", "name"}
  unknown = sorted(set(kwargs) - fields)
  if unknown:
    raise TypeError(f"unknown model config keys {unknown}; valid keys: {sorted(fields)}")
  kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
  return Deform3DTransformer(dtype=dtype, **kwargs)


@functools.partial(jax.jit, static_argnums=0)
def _apply_with_intermediates(model, variables, frames, keypoints):
  return model.apply(variables, frames, keypoints, train=False, mutable=["intermediates"])


def attention_maps(model: Deform3DTransformer, variables, frames, keypoints):
  """Runs the model in eval mode and returns ``(logits, maps)``.

  ``maps`` is a flat dict ``{"block0/joint_attn/attn/attention": array, ...}`` of everything the
  modules sowed: attention weights (rows sum to 1), ``joint_importance`` and
  ``sampling_points`` of the deformable attention.
  """
  logits, state = _apply_with_intermediates(model, variables, frames, keypoints)
  flat = flax.traverse_util.flatten_dict(state["intermediates"], sep="/")
  maps = {}
  for key, value in flat.items():
    # sow stores a tuple per call; each module is called once per forward pass.
    maps[key] = value[0] if isinstance(value, tuple) and len(value) == 1 else value
  return logits, maps
