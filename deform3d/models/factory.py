"""Building the model from a config and reading its attention maps."""
from __future__ import annotations

from typing import Any, Mapping

import dataclasses
import functools

import flax
import jax
import jax.numpy as jnp

from deform3d.models import convert
from deform3d.models.model import VARIANTS, Deform3DTransformer

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def resolved_config(model_config: Mapping[str, Any]) -> dict:
  """The model's full settings, the variant's sizes laid under ``model_config``: what a
  checkpoint records, so a later change of ``VARIANTS`` cannot pass for the same model."""
  kwargs = dict(model_config)
  variant = kwargs.pop("variant", None)
  if variant is not None:
    if variant not in VARIANTS:
      raise ValueError(f"model.variant must be one of {sorted(VARIANTS)}, got {variant!r}")
    kwargs = {**VARIANTS[variant], **kwargs}
  return {k: list(v) if isinstance(v, tuple) else v for k, v in sorted(kwargs.items())}


def build_model(model_config: Mapping[str, Any]) -> Deform3DTransformer:
  """``Deform3DTransformer`` from a mapping (e.g. ``config.model``).

  ``variant`` names a size of ``VARIANTS`` (deform3d/models/model.py); the mapping's other keys
  override single values. ``dtype`` may be a string. Unknown keys and a missing size raise an
  error naming them; lists become tuples (module fields must be hashable). The frame and joint
  counts are not set here: the model takes them from its inputs.
  """
  kwargs = resolved_config(model_config)
  dtype = kwargs.pop("dtype", "float32")
  if isinstance(dtype, str):
    if dtype not in DTYPES:
      raise ValueError(f"model.dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    dtype = DTYPES[dtype]
  fields = set(Deform3DTransformer.__dataclass_fields__) - {"parent", "name"}
  unknown = sorted(set(kwargs) - fields)
  if unknown:
    raise TypeError(f"unknown model config keys {unknown}; valid keys: {sorted(fields)} and "
                    "variant")
  required = {k for k, f in Deform3DTransformer.__dataclass_fields__.items()
              if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
              and k not in ("parent", "name")}
  missing = sorted(required - set(kwargs))
  if missing:
    raise TypeError(f"model config lacks {missing}: set model.variant (one of "
                    f"{sorted(VARIANTS)}) or give them")
  kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
  return Deform3DTransformer(dtype=dtype, **kwargs)


@functools.partial(jax.jit, static_argnums=0)
def _apply_with_intermediates(model, variables, frames, keypoints):
  return model.apply(variables, frames, keypoints, train=False, mutable=["intermediates"])


def attention_maps(model: Deform3DTransformer, variables, frames, keypoints):
  """Runs the model in eval mode and returns ``(logits, maps)``.

  ``maps`` is a flat dict ``{"block0/joint_attn/attn/attention": array, ...}`` of everything the
  modules sowed, per block (a ``scan`` model runs as its loop form here): attention weights (rows sum to 1), ``joint_importance`` and
  ``sampling_points`` of the deformable attention.
  """
  if model.scan:  # per-block maps come from the loop over the same parameters
    model = model.clone(scan=False, merge_in_block=model.merges_in_block)
  if model.attention_kernel != "xla":  # the fused kernel never materializes its weights
    model = model.clone(attention_kernel="xla")
  variables = convert.for_model(variables, model)
  logits, state = _apply_with_intermediates(model, variables, frames, keypoints)
  flat = flax.traverse_util.flatten_dict(state["intermediates"], sep="/")
  maps = {}
  for key, value in flat.items():
    # sow stores a tuple per call; each module is called once per forward pass.
    maps[key] = value[0] if isinstance(value, tuple) and len(value) == 1 else value
  return logits, maps
