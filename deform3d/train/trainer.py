"""Sharded training loop: jitted train/eval steps on a ``Mesh``, AdamW, orbax checkpoints.

Data arrives as iterators of process-local NumPy batches (built by ``data_pipelines`` in
``launch/train.py``); this module never imports TensorFlow.
"""
from __future__ import annotations

import collections
import itertools
import json
import os
import time
from typing import Any, Callable, Iterator, Optional

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from deform3d.models import build_model, convert, resolved_config
from deform3d.ops.resize import resize_crops
from deform3d.pixels import normalize_pixels
from deform3d.train import sharding as shd
from deform3d.train import curves
from deform3d.train.metrics import classification_metrics


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


class ConfigMismatchError(RuntimeError):
  """The workdir holds checkpoints of a different model/dataset configuration."""


def _decay_mask(params):
  """Weight decay on Dense/conv kernels only (not biases, norms, embeddings, tokens)."""
  flat = flax.traverse_util.flatten_dict(params)
  return flax.traverse_util.unflatten_dict({k: k[-1] == "kernel" for k in flat})


def make_optimizer(config: ml_collections.ConfigDict):
  if not 0 <= config.warmup_steps < config.total_steps:
    raise ValueError(f"config.warmup_steps={config.warmup_steps} must be in [0, total_steps="
                     f"{config.total_steps})")
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=config.learning_rate, warmup_steps=config.warmup_steps,
      decay_steps=config.total_steps, end_value=config.learning_rate * config.final_lr_fraction)
  tx = optax.chain(
      optax.clip_by_global_norm(config.grad_clip),
      optax.adamw(schedule, b1=0.9, b2=0.999, weight_decay=config.weight_decay, mask=_decay_mask))
  return tx, schedule


# Model settings that change how the model is computed, never its parameters or its function
# (docs/model.md, "Options"): a checkpoint resumes under any value of them, also one written
# before such a setting existed.
COMPUTATION_ONLY = ("fast", "remat", "sampler_backward", "attention_kernel")
# Settings that change the parameters' layout, not the function: a checkpoint of either layout
# is converted on restore (``deform3d.models.convert``).
LAYOUT_ONLY = ("scan",)
# Values of settings that a checkpoint written before they existed had: blocks merged before
# their MLP, one per-block parameter tree, the cross token started from RGB at lecun scale, the
# pose features in image units.
LEGACY = {"merge_in_block": True, "scan": False, "cross_init": "rgb", "cross_init_scale": 1.0,
          "pose_norm": False, "cross_rgb_scale": None}


def fingerprint_diff(got: dict, want: dict) -> list:
  """The model settings (and ``"num_classes"``) in which two fingerprints differ, leaving out
  ``COMPUTATION_ONLY``; empty when a checkpoint of ``got`` may be restored under ``want``."""
  keys = (set(got["model"]) | set(want["model"])) - set(COMPUTATION_ONLY) - set(LAYOUT_ONLY)

  def value(fp, k):
    v = fp["model"].get(k, LEGACY.get(k))
    if k == "cross_rgb_scale" and v is None:  # None: as layer_scale, the same model
      v = fp["model"].get("layer_scale")
    return v

  diff = sorted(k for k in keys if value(got, k) != value(want, k))
  if got.get("num_classes") != want.get("num_classes") and "num_classes" not in diff:
    diff.append("num_classes")
  # The clip shapes that size parameters (time, person and joint embeddings); a checkpoint
  # written before they were recorded is not checked on them.
  got_in, want_in = got.get("inputs") or {}, want.get("inputs") or {}
  diff += sorted(k for k in set(got_in) & set(want_in) if got_in[k] != want_in[k])
  return diff


def input_settings(config: ml_collections.ConfigDict) -> dict:
  """``{config path: value}`` of the settings that set the clip shapes, recorded with each
  checkpoint (the persons default to 1 where a config has none)."""
  return {"num_frames": config.get("num_frames"), "image_size": config.get("image_size"),
          "dataset.max_persons": config.dataset.get("max_persons", 1),
          "dataset.joint_layout": config.dataset.get("joint_layout")}


def fingerprint(config: ml_collections.ConfigDict) -> dict:
  """What a checkpoint must agree on to be resumed: the model's full settings (its variant's
  sizes included), the label space and the clip shapes (``input_settings``)."""
  model = resolved_config(config.model)
  built = build_model(config.model)
  # Recorded, so that a missing value means a checkpoint from before these settings.
  model.setdefault("scan", built.scan)
  model["merge_in_block"] = built.merges_in_block
  return {"model": json.loads(json.dumps(model)), "num_classes": config.model.num_classes,
          "inputs": input_settings(config)}


def _layout(batch: dict) -> tuple:
  """A batch's keys, shapes and dtypes (what a compiled step must agree with)."""
  return tuple(sorted((k, tuple(v.shape), str(v.dtype)) for k, v in batch.items()))


def input_shapes(batch: dict, image_size: Optional[int] = None) -> dict:
  """Per-clip shapes ``{"frames": (T, H, W, 3), "keypoints": (T, J, D) or (P, T, J, D)}`` that
  the model gets from a training batch (``(B, ...)``) or an evaluation batch (``(B, K, ...)``:
  ``K`` clips per video). A batch of padded crops (``crop``: ``dataset.resize="device"``) is
  resized to ``image_size`` in the step, so its frames are ``(T, image_size, image_size, 3)``."""
  frames = np.shape(batch["frames"])
  lead = len(frames) - 4
  frames = tuple(frames[lead:])
  if "crop" in batch:
    if image_size is None:
      raise ValueError("input_shapes: the batch holds padded crops (dataset.resize='device'); "
                       "pass the config's image_size")
    frames = (frames[0], image_size, image_size, frames[3])
  return {"frames": frames, "keypoints": tuple(np.shape(batch["keypoints"])[lead:])}


class Trainer:
  """Builds the model, optimizer, shardings and the jitted steps for ``config`` on ``mesh``.

  The model is initialised from the data's shapes: ``shapes`` as given by ``input_shapes`` (of
  the first batch, or of the dataset's element spec: ``data_pipelines.loaders.input_shapes``).
  """

  def __init__(self, config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, shapes: dict):
    self.config = config
    self.mesh = mesh
    self.model = build_model(config.model)
    self.tx, self.schedule = make_optimizer(config)
    self.batch_sharding = shd.batch_sharding(mesh)
    self.replicated = shd.replicated(mesh)
    self.example_shapes = {k: (1,) + tuple(shapes[k]) for k in ("frames", "keypoints")}
    self.device_resize = config.dataset.get("resize", "host") == "device"
    abstract = jax.eval_shape(self._init, jax.random.key(0))
    self.state_sharding = TrainState(
        step=self.replicated,
        params=shd.param_sharding(abstract.params, mesh, config.param_sharding,
                                  config.fsdp_min_size),
        opt_state=shd.param_sharding(abstract.opt_state, mesh, config.param_sharding,
                                     config.fsdp_min_size))
    self.abstract_state = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract,
        self.state_sharding)
    self.init = jax.jit(self._init, out_shardings=self.state_sharding)
    self.train_step = jax.jit(self._train_step,
                              in_shardings=(self.state_sharding, self.batch_sharding),
                              out_shardings=(self.state_sharding, self.replicated),
                              donate_argnums=(0,))
    self.eval_step = jax.jit(self._eval_step,
                             in_shardings=(self.state_sharding.params, self.batch_sharding),
                             out_shardings=self.batch_sharding)
    self._compiled = {}  # compile(): {kind: (batch layout, compiled program)}
    self.compiled_calls = collections.Counter()  # steps run by those programs, per kind

  def describe(self) -> list:
    """Lines that say what this trainer runs: the platform and devices, the deformable
    attention's path (after ``auto``), the compute dtype and the parameters' sharding."""
    device = self.mesh.devices.flat[0]
    return [
        f"platform: {device.platform} ({device.device_kind}), {self.mesh.size} devices in the "
        f"mesh {dict(self.mesh.shape)}, {jax.process_count()} processes",
        f"deformable attention: {self.model.attention_path(device.platform)}",
        f"compute dtype: {jnp.dtype(self.model.dtype).name} (parameters float32, "
        f"{self.config.param_sharding})",
    ]

  # -- ahead-of-time compilation ---------------------------------------------------------------
  def batch_specs(self) -> dict:
    """The global batches the input pipeline delivers for this config, as shape/dtype
    structures: ``{"train": {...}, "eval": {...}}`` (evaluation: ``(B, K, ...)``, ``K`` clips
    per video; both with the pipeline's ``mask``)."""
    b, k = self.config.batch_size, self.config.dataset.get("eval_clips", 1)
    return {kind: {name: jax.ShapeDtypeStruct(shape, dtype, sharding=self.batch_sharding)
                   for name, (shape, dtype) in self._batch_fields(lead).items()}
            for kind, lead in (("train", (b,)), ("eval", (b, k)))}

  def _batch_fields(self, lead: tuple) -> dict:
    """``{name: (shape, dtype)}`` of a batch as the input pipeline makes it, with leading axes
    ``lead``: ``(B,)`` for training, ``(B, K)`` for evaluation."""
    frames_dtype = np.dtype(self.config.dataset.get("frames_dtype", "uint8"))  # as the pipeline's
    frames = self.example_shapes["frames"][1:]
    fields = {}
    if self.device_resize:  # padded crops and their sizes
      pad = self.config.dataset.crop_pad
      frames = (frames[0], pad, pad, frames[3])
      fields["crop"] = (lead[:1], np.dtype(np.int32))
      fields["flip"] = (lead[:1], np.dtype(bool))
    return {"frames": (lead + frames, frames_dtype),
            "keypoints": (lead + self.example_shapes["keypoints"][1:], np.dtype(np.float32)),
            "label": (lead[:1], np.dtype(np.int32)), "mask": (lead[:1], np.dtype(np.float32)),
            **fields}

  def compile(self) -> None:
    """Compiles ``init`` and the training and evaluation steps now, for ``batch_specs()``, so
    that they can be compiled before any data exists (``launch/train.py`` does it while the
    embedded dataset is written). A batch of exactly those shapes and dtypes then runs the
    compiled programs; any other batch goes through ``jax.jit`` as before."""
    specs = self.batch_specs()
    key = jax.random.key(0)
    self._compiled = {
        "init": (_layout({"key": key}), self.init.lower(key).compile()),
        "train": (_layout(specs["train"]),
                  self.train_step.lower(self.abstract_state, specs["train"]).compile()),
        "eval": (_layout(specs["eval"]),
                 self.eval_step.lower(self.abstract_state.params, specs["eval"]).compile())}

  def _run(self, kind: str, jitted: Callable, args: tuple, layout: tuple):
    compiled = self._compiled.get(kind)
    if compiled is not None and compiled[0] == layout:
      self.compiled_calls[kind] += 1
      return compiled[1](*args)
    return jitted(*args)

  def run_init(self, key) -> "TrainState":
    """``init``, through the program of ``compile()`` when there is one."""
    return self._run("init", self.init, (key,), _layout({"key": key}))

  def run_train_step(self, state: "TrainState", batch: dict):
    """``train_step``, through the program of ``compile()`` when it fits the batch."""
    return self._run("train", self.train_step, (state, batch), _layout(batch))

  def run_eval_step(self, params, batch: dict):
    """``eval_step``, through the program of ``compile()`` when it fits the batch."""
    return self._run("eval", self.eval_step, (params, batch), _layout(batch))

  # -- pure functions ---------------------------------------------------------------------------
  def _on_mesh(self):
    """The context of the model's trace: the trainer's mesh, so that the Pallas kernels run per
    device (``ops.fused_attention``, ``shard_map`` over the batch)."""
    return jax.sharding.use_abstract_mesh(self.mesh.abstract_mesh)

  def _init(self, rng):
    frames = jnp.zeros(self.example_shapes["frames"], jnp.float32)
    keypoints = jnp.zeros(self.example_shapes["keypoints"], jnp.float32)
    with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((), ())):
      # One example: init runs unpartitioned (its parameters are sharded by out_shardings).
      params = self.model.init(rng, frames, keypoints)["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=self.tx.init(params))

  def _frames(self, batch):
    """The model's frames: with ``dataset.resize="device"``, the batch's padded crops resized to
    ``image_size`` here (``deform3d.ops.resize``), mirrored where ``flip``, and normalized; else
    the batch's own."""
    if "crop" not in batch:
      return batch["frames"]
    size = self.example_shapes["frames"][2]
    return normalize_pixels(resize_crops(batch["frames"], batch["crop"], size, batch["flip"]))

  def _loss(self, params, batch, rng):
    with self._on_mesh():
      logits = self.model.apply({"params": params}, self._frames(batch), batch["keypoints"],
                                train=True, rngs={"dropout": rng})
    num_classes = logits.shape[-1]
    targets = optax.smooth_labels(jax.nn.one_hot(batch["label"], num_classes),
                                  self.config.label_smoothing)
    loss = optax.softmax_cross_entropy(logits, targets).mean()
    acc = (logits.argmax(-1) == batch["label"]).mean()
    return loss, acc

  def _train_step(self, state: TrainState, batch):
    # Dropout randomness is a pure function of (seed, step): resumed runs replay it exactly.
    rng = jax.random.fold_in(jax.random.key(self.config.seed + 1), state.step)
    (loss, acc), grads = jax.value_and_grad(self._loss, has_aux=True)(state.params, batch, rng)
    updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "accuracy": acc, "grad_norm": optax.tree.norm(grads),
               "learning_rate": self.schedule(state.step)}
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  def _eval_step(self, params, batch):
    """Batch frames ``(B, K, T, H, W, 3)``: logits averaged over the ``K`` clips -> ``(B, C)``."""
    frames, keypoints = self._frames(batch), batch["keypoints"]
    b, k = keypoints.shape[:2]
    with self._on_mesh():
      logits = self.model.apply({"params": params},
                                frames.reshape((b * k,) + frames.shape[2:]),
                                keypoints.reshape((b * k,) + keypoints.shape[2:]), train=False)
    return logits.reshape(b, k, -1).mean(axis=1)

  # -- loops ------------------------------------------------------------------------------------
  def evaluate(self, params, batches: Iterator[dict]) -> dict:
    """Runs ``eval_step`` over every process's padded, masked batches; returns metrics and the
    per-example ``logits`` and ``labels`` (step by step; within a step, process 0's examples
    first, then process 1's, ...).

    Processes may hold different numbers of batches (an uneven split: 9 and 8 videos at a
    per-process batch of 4 are 3 and 2 batches). Every step, one small all-gather tells each
    process whether any process still has a batch; a process that has run out feeds an
    all-masked batch of the same shape. So every process runs the same number of eval steps and
    collectives, and none waits forever for the others (big_vision pads its evaluation alike).
    """
    all_logits, all_labels = [], []
    multi = jax.process_count() > 1
    gather = lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True))
    it = iter(batches)
    template = None  # zeros of this process's batch shape, all masked
    while True:
      batch = next(it, None)
      if batch is not None and template is None:
        template = {k: np.zeros_like(v) for k, v in batch.items() if v.dtype.kind in "biuf"}
      if multi:
        # [has a batch, local batch size, clips per video] of every process.
        shape = ((batch["label"].shape[0], batch["keypoints"].shape[1]) if batch is not None
                 else (0, 0))
        info = gather(np.array([batch is not None, *shape], np.int32)).reshape(-1, 3)
        if not info[:, 0].any():
          break
        if batch is None:
          batch = template if template is not None else self._empty_eval_batch(
              *info[info[:, 0].argmax(), 1:])
      elif batch is None:
        break
      batch = shd.global_batch(batch, self.mesh)
      logits = gather(self.run_eval_step(params, batch))
      keep = gather(batch["mask"]) > 0
      all_logits.append(logits[keep])
      all_labels.append(gather(batch["label"])[keep])
    if not all_logits:
      raise ValueError("evaluate: the evaluation data has no batches")
    logits = np.concatenate(all_logits)
    labels = np.concatenate(all_labels)
    out = classification_metrics(logits, labels)
    out["logits"], out["labels"] = logits, labels
    return out

  def _empty_eval_batch(self, batch_size: int, clips: int) -> dict:
    """An all-masked evaluation batch ``(B, K, ...)`` for a process that has no data at all."""
    return {name: np.zeros(shape, dtype) for name, (shape, dtype)
            in self._batch_fields((int(batch_size), int(clips))).items()}


def checkpoint_manager(workdir: str, config) -> ocp.CheckpointManager:
  # The loop decides when to save (every checkpoint_every steps and at the end of a run).
  options = ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints,
                                         enable_async_checkpointing=False)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"),
                               options=options)


def restore_or_init(trainer: Trainer, mngr: ocp.CheckpointManager, config) -> TrainState:
  """Latest checkpoint in the workdir if any (refusing one of another config), else a new state."""
  step = mngr.latest_step()
  if step is None:
    return trainer.run_init(jax.random.key(config.seed))
  return restore_step(trainer, mngr, config, step)


def restore_step(trainer: Trainer, mngr: ocp.CheckpointManager, config, step: int) -> TrainState:
  """The checkpoint at ``step``, with the shardings of ``trainer``; refuses another config."""
  # Check the configuration first: restoring arrays of other shapes fails with obscure errors.
  got = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  want = fingerprint(config)
  diff = fingerprint_diff(got, want)
  if diff:
    raise ConfigMismatchError(
        f"{mngr.directory}: checkpoint at step {step} was written by another configuration "
        f"(differs in {', '.join(k if k in want['inputs'] else 'model.' + k for k in diff)}); "
        "use a fresh --workdir or the original "
        f"config. checkpoint: {got}; config: {want}")
  if got["model"].get("scan", LEGACY["scan"]) == trainer.model.scan:
    restored = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(trainer.abstract_state)))
    return restored["state"]
  # The other parameter layout (blocks stacked or not): restore it as written, then convert.
  other = trainer.model.clone(scan=not trainer.model.scan,
                              merge_in_block=trainer.model.merges_in_block)
  stored = jax.eval_shape(lambda st: convert.for_model(st, other), trainer.abstract_state)
  stored = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype,
                                                       sharding=trainer.replicated), stored)
  restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(stored)))
  return jax.device_put(convert.for_model(restored["state"], trainer.model),
                        trainer.state_sharding)


def restore_checkpoint(trainer: Trainer, workdir: str, config, step: Optional[int] = None):
  """``(state, step)`` of the checkpoint at ``step`` (default: the latest) in ``workdir``, for
  evaluation and explanation; ``FileNotFoundError`` naming the workdir and the steps it has when
  there is no such checkpoint."""
  mngr = checkpoint_manager(workdir, config)
  step = mngr.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"{workdir}: no checkpoint found under checkpoints/")
  if step not in mngr.all_steps():
    raise FileNotFoundError(f"{workdir}: no checkpoint at step {step}; have "
                            f"{list(mngr.all_steps())}")
  return restore_step(trainer, mngr, config, step), step


def load_trained(config, workdir: str, input_shapes, step: Optional[int] = None):
  """``(trainer, state, step)`` for evaluation, explanation and prediction: a ``Trainer`` on
  the default mesh for ``input_shapes`` and the checkpoint at ``step`` (default: the latest);
  ``FileNotFoundError`` as ``restore_checkpoint``."""
  trainer = Trainer(config, shd.make_mesh(), input_shapes)
  state, step = restore_checkpoint(trainer, workdir, config, step)
  return trainer, state, step


class CheckpointWriteError(OSError):
  """Saving a checkpoint failed (e.g. disk full); earlier checkpoints are intact."""


def save(mngr: ocp.CheckpointManager, state: TrainState, config) -> bool:
  """Saves ``state``; orbax writes to a temporary folder and renames it when complete, so a
  failed or killed save never replaces or damages an earlier checkpoint."""
  step = int(jax.device_get(state.step))
  try:
    return mngr.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(fingerprint(config))),
        force=True)
  except OSError as e:
    raise CheckpointWriteError(
        e.errno, f"writing the checkpoint of step {step} to {mngr.directory} failed "
        f"({os.strerror(e.errno) if e.errno else e}); the last complete checkpoint (step "
        f"{mngr.latest_step()}) is intact. Free space or move --workdir, then rerun to resume."
    ) from e


def _tee(log: Callable[[str], None], path: str) -> Callable[[str], None]:
  """``log`` that also appends each line to ``path`` (the run's console record)."""
  def both(line: str) -> None:
    log(line)
    with open(path, "a") as fh:
      fh.write(line + "\n")
  return both


def _fmt_time(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else \
      f"{seconds // 60}m{seconds % 60:02d}s"


def train(config: ml_collections.ConfigDict, workdir: str, *,
          make_train_iter: Callable[[int], Iterator[dict]],
          make_eval_iter: Optional[Callable[[], Iterator[dict]]] = None,
          mesh: Optional[jax.sharding.Mesh] = None, stop_after: Optional[int] = None,
          log: Callable[[str], None] = print, prepared: Optional[Trainer] = None) -> dict:
  """Trains to ``config.total_steps``, resuming from the latest checkpoint in ``workdir``.

  ``make_train_iter(start_step)`` returns the training batches from ``start_step`` on.
  ``stop_after``: leave after this many steps of this run (as if preempted; for tests).
  ``prepared``: a ``Trainer`` for ``config`` built (and compiled) ahead, used if the data's clip
  shapes are the ones it was built for.
  Returns the last training metrics, the losses of this run and the final eval metrics.
  """
  mesh = mesh or (prepared.mesh if prepared is not None else shd.make_mesh())
  is_main = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  mngr = checkpoint_manager(workdir, config)
  it = make_train_iter(mngr.latest_step() or 0)
  first = next(it)  # the model is initialised from the data's shapes
  it = itertools.chain([first], it)
  shapes = input_shapes(first, config.get("image_size"))
  if (prepared is not None and prepared.mesh is mesh and prepared.example_shapes
      == {k: (1,) + tuple(v) for k, v in shapes.items()}):
    trainer = prepared
  else:
    if prepared is not None and is_main:
      log(f"the steps compiled ahead do not fit the data's clip shapes {shapes}: compiling again")
    trainer = Trainer(config, mesh, shapes)
  if is_main:
    for line in trainer.describe():
      log(line)
  state = restore_or_init(trainer, mngr, config)
  start = int(jax.device_get(state.step))
  if is_main:
    with open(os.path.join(workdir, "config.json"), "w") as fh:
      fh.write(config.to_json_best_effort(indent=1))
    with open(os.path.join(workdir, "model.json"), "w") as fh:  # the variant resolved
      json.dump(resolved_config(config.model), fh, indent=1)
    log = _tee(log, os.path.join(workdir, "log.txt"))
    if start:
      log(f"resumed from checkpoint at step {start} in {workdir}")
  writer = None
  if is_main and config.tensorboard:
    from tensorboardX import SummaryWriter
    writer = SummaryWriter(os.path.join(workdir, "tb"))

  losses, metrics, eval_metrics = [], {}, None
  t0, s0 = time.time(), start
  # Input wait: the time this loop spends getting the next batch onto the devices (the step
  # runs asynchronously meanwhile), as a share of the log window's training time (its wall
  # time less checkpoint saves and evaluations).
  wait, aside, window_start = 0.0, 0.0, time.perf_counter()
  end = config.total_steps if stop_after is None else min(config.total_steps, start + stop_after)
  for step in range(start + 1, end + 1):
    t_in = time.perf_counter()
    batch = shd.global_batch(next(it), mesh)
    wait += time.perf_counter() - t_in
    state, m = trainer.run_train_step(state, batch)
    saving = step % config.checkpoint_every == 0 or step == end
    if step % config.log_every == 0 or step == end or saving:
      # Checked before every save, so a checkpoint never holds a state past a NaN/inf loss.
      metrics = {k: float(v) for k, v in jax.device_get(m).items()}
      if not (np.isfinite(metrics["loss"]) and np.isfinite(metrics["grad_norm"])):
        raise FloatingPointError(
            f"loss {metrics['loss']} / grad norm {metrics['grad_norm']} at step {step} (checked "
            f"every {min(config.log_every, config.checkpoint_every)} steps): stopping; last good "
            f"checkpoint kept at step {mngr.latest_step()} in {workdir}/checkpoints")
    if step % config.log_every == 0 or step == end:
      losses.append((step, metrics["loss"]))
      rate = (step - s0) / max(time.time() - t0, 1e-9)
      now = time.perf_counter()
      input_share = min(wait / max(now - window_start - aside, 1e-9), 1.0)
      wait, aside, window_start = 0.0, 0.0, now
      if is_main:
        log(f"step {step}/{config.total_steps} | loss {metrics['loss']:.4f} | "
            f"acc {metrics['accuracy']:.3f} | lr {metrics['learning_rate']:.2e} | "
            f"{rate:.2f} steps/s | ETA {_fmt_time((config.total_steps - step) / rate)} | "
            f"input wait {100 * input_share:.0f}%")
        if writer:
          for k, v in metrics.items():
            writer.add_scalar(f"train/{k}", v, step)
          writer.add_scalar("train/input_wait_share", input_share, step)
    t_aside = time.perf_counter()
    if saving:
      save(mngr, state, config)
    if make_eval_iter and config.eval_every and (step % config.eval_every == 0
                                                 or step == config.total_steps):
      eval_metrics = trainer.evaluate(state.params, make_eval_iter())
      if is_main:
        log(f"eval at step {step}: top1 {eval_metrics['top1']:.4f} | top5 "
            f"{eval_metrics['top5']:.4f} | mean class acc "
            f"{eval_metrics['mean_class_accuracy']:.4f} ({eval_metrics['num_examples']} clips)")
        if writer:
          for k in ("top1", "top5", "mean_class_accuracy"):
            writer.add_scalar(f"eval/{k}", eval_metrics[k], step)
    aside += time.perf_counter() - t_aside
  mngr.wait_until_finished()
  mngr.close()
  if writer:
    writer.close()
  if is_main and (losses or start):  # the whole run's curves, resumed parts included
    curves.plot({os.path.basename(os.path.normpath(workdir)): workdir},
                os.path.join(workdir, "curves.png"))
  return {"train": metrics, "losses": losses, "eval": eval_metrics, "state": state,
          "trainer": trainer}
