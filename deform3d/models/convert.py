"""Parameter layouts of ``Deform3DTransformer``: per block (``scan=False``: ``block{i}``) and
stacked per stage (``scan=True``: ``stage{s}/block`` with a leading layer axis).

The conversions work on any tree that holds the parameters' layout at some depth (parameters,
their gradients, an optimizer state whose moments mirror them, abstract shapes under
``jax.eval_shape``): every dict with ``block0`` (or ``stage0``) keys is converted.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp


def _stack_dict(d: dict, stages) -> dict:
  d = dict(d)
  for s, blocks in enumerate(stages):
    trees = [d.pop(f"block{i}") for i in blocks]
    d[f"stage{s}"] = {"block": jax.tree.map(lambda *x: jnp.stack(x), *trees)}
  return d


def _unstack_dict(d: dict, stages) -> dict:
  d = dict(d)
  for s, blocks in enumerate(stages):
    tree = d.pop(f"stage{s}")["block"]
    for j, i in enumerate(blocks):
      d[f"block{i}"] = jax.tree.map(lambda x, j=j: x[j], tree)
  return d


def _walk(tree: Any, key: str, fn):
  if isinstance(tree, dict) or hasattr(tree, "items") and hasattr(tree, "keys"):
    d = {k: _walk(v, key, fn) for k, v in tree.items()}
    return fn(d) if key in d else d
  if isinstance(tree, tuple) and hasattr(tree, "_fields"):  # NamedTuple (optax states)
    return type(tree)(*(_walk(v, key, fn) for v in tree))
  if isinstance(tree, (list, tuple)):
    return type(tree)(_walk(v, key, fn) for v in tree)
  if hasattr(tree, "__dataclass_fields__") and hasattr(tree, "replace"):  # flax struct
    return tree.replace(**{f: _walk(getattr(tree, f), key, fn)
                           for f in tree.__dataclass_fields__
                           if not f.startswith("_") and hasattr(tree, f)})
  return tree


def stack_blocks(tree, model):
  """Per-block layout (``block{i}``) -> stacked per stage (``stage{s}/block``), for ``model``'s
  stages (``model.stages()``)."""
  if model.merges_in_block:
    raise ValueError("stack_blocks: merge_in_block=True models have no stacked layout")
  return _walk(tree, "block0", lambda d: _stack_dict(d, model.stages()))


def unstack_blocks(tree, model):
  """Stacked per stage (``stage{s}/block``) -> per-block layout (``block{i}``)."""
  return _walk(tree, "stage0", lambda d: _unstack_dict(d, model.stages()))


def layout(tree) -> str:
  """``"stacked"``, ``"per_block"`` or ``"none"``: the layout found in ``tree``."""
  found = []
  _walk(tree, "stage0", lambda d: found.append("stacked") or d)
  _walk(tree, "block0", lambda d: found.append("per_block") or d)
  return found[0] if found else "none"


def for_model(tree, model):
  """``tree`` in the layout ``model`` expects (``model.scan``), converting when needed. Both
  layouts hold the same function only with blocks merged between each other
  (``merge_in_block=False``): a loop model must say so to take stacked parameters."""
  have = layout(tree)
  if model.scan and have == "per_block":
    return stack_blocks(tree, model)
  if not model.scan and have == "stacked":
    return unstack_blocks(tree, model)
  return tree
