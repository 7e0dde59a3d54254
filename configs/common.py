"""What the config files share: their ``get_config(arg)`` argument parser, the ``runlocal``
variant of the paper datasets' configs, and the per-clip input shapes a config describes.

No experiment's values live here: every experiment file states its own.
"""
from __future__ import annotations

import ml_collections


def parse_arg(arg: str | None, **spec) -> ml_collections.ConfigDict:
  """Parses ``get_config``'s string argument (``--config file.py:ARG``) in big_vision's manner.

  ``ARG`` is ``key=value,key=value``; ``spec`` gives each key's default, whose type converts the
  value (``bool`` accepts true/false/1/0). A bare ``value`` sets the first key. Unknown keys are
  errors naming the valid ones.
  """
  out = ml_collections.ConfigDict(dict(spec))
  if not arg:
    return out
  items = [x for x in arg.split(",") if x]
  first = next(iter(spec))
  for i, item in enumerate(items):
    if "=" in item:
      key, value = item.split("=", 1)
    elif i == 0:
      key, value = first, item
    else:
      raise ValueError(f"config argument {item!r} in {arg!r} is not key=value")
    if key not in spec:
      raise ValueError(f"unknown config argument {key!r} in {arg!r}; valid: {sorted(spec)}")
    default = spec[key]
    if isinstance(default, bool):
      if value.lower() not in ("true", "false", "1", "0"):
        raise ValueError(f"config argument {key}={value!r}: expected true or false")
      out[key] = value.lower() in ("true", "1")
    else:
      out[key] = type(default)(value)
  return out


def check_choice(name: str, value, choices) -> None:
  if value not in choices:
    raise ValueError(f"config argument {name}={value!r} is not one of {sorted(choices)}")


def load(spec: str) -> ml_collections.ConfigDict:
  """The config named ``NAME[:ARG]`` (``configs/NAME.py``'s ``get_config(ARG)``), as
  ``--config configs/NAME.py:ARG`` gives it to the launch scripts."""
  import importlib
  name, _, arg = spec.partition(":")
  name = name.removesuffix(".py").split("/")[-1]
  return importlib.import_module(f"configs.{name}").get_config(arg or None)


def runlocal(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The ``runlocal=true`` variant of a paper dataset's config (``ntu``, ``finegym``,
  ``pennaction``): the same data and pipeline with the tiny model, 32 px, 4 frames, batch 2 and
  2 steps, to check a build end to end on a laptop. Changes ``c`` in place and returns it."""
  c.num_frames = 4
  c.image_size = 32
  c.model.variant = "tiny"
  c.model.dtype = "float32"
  c.dataset.eval_clips = 1
  c.dataset.shuffle_buffer = 8
  c.batch_size = 2
  c.total_steps = 2
  c.warmup_steps = 1
  c.log_every = 1
  c.eval_every = 2
  c.checkpoint_every = 2
  c.tensorboard = False
  return c


def clip_shapes(config: ml_collections.ConfigDict) -> dict:
  """Per-clip input shapes ``{"frames": (T, S, S, 3), "keypoints": (T, J, 3)}`` that the input
  pipeline makes for ``config`` (``J`` from its joint layout; ``(x, y, score)`` per joint;
  ``(P, T, J, 3)`` with ``dataset.max_persons = P > 1``), without TensorFlow: for benchmarks and
  size reports where no dataset is at hand (``data_pipelines.loaders.input_shapes`` reads them
  from a dataset's element spec)."""
  from data_pipelines.skeletons import LAYOUTS  # plain Python
  t, s = config.num_frames, config.image_size
  keypoints = (t, len(LAYOUTS[config.dataset.joint_layout]), 3)
  persons = config.dataset.get("max_persons", 1)
  if persons > 1:
    keypoints = (persons,) + keypoints
  return {"frames": (t, s, s, 3), "keypoints": keypoints}
