"""Run by test_multihost.py: one process of a 2-process x 4-CPU-device run, or the single-process
8-device reference fed the same global batches; the micro config (``tests.micro_config``).

  multihost_worker.py multi DATA WORKDIR PROCESS_ID PORT
  multihost_worker.py single DATA WORKDIR
  multihost_worker.py eval DATA PROCESS_ID PORT   (one of two processes, one device each)
  multihost_worker.py eval DATA                   (the one-process reference)

The eval modes evaluate the same drawn parameters on the ``val`` split (per-process batch 4) and
print ``EVAL {json}`` from process 0: the metrics, and the logits and labels of every clip.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

STEPS = 6  # of the config's total_steps: its compiled step, as the other tests of the variant


def config_for(data):
  from tests import micro_config
  c = micro_config(data)
  c.log_every = 1
  c.eval_every = 0
  c.checkpoint_every = 3
  return c


def evaluate(data, *rest):
  from deform3d.train import distributed
  if rest:
    how = distributed.initialize(f"localhost:{rest[1]}", 2, int(rest[0]))
  else:
    how = distributed.initialize()
  from data_pipelines import loaders
  from deform3d.train import sharding, trainer

  config = config_for(data)
  config.batch_size = 4 * jax.process_count()  # 4 videos per process and step
  tr = trainer.Trainer(config, sharding.make_mesh(), loaders.input_shapes(config))
  params = tr.init(jax.random.key(0)).params
  # The head is zero-initialised: move every parameter so that the logits tell clips apart.
  def perturb(params):
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(7), len(leaves))
    return jax.tree.unflatten(tree, [p + 0.3 * jax.random.normal(k, p.shape)
                                     for p, k in zip(leaves, keys)])
  params = jax.jit(perturb, out_shardings=tr.state_sharding.params)(params)
  out = tr.evaluate(params, loaders.eval_iter(config, "val"))
  if jax.process_index() == 0:
    print("EVAL " + json.dumps({
        "how": how, "processes": jax.process_count(), "top1": out["top1"],
        "top5": out["top5"], "mean_class_accuracy": out["mean_class_accuracy"],
        "num_examples": out["num_examples"],
        "confusion_matrix": out["confusion_matrix"].tolist(),
        "logits": out["logits"].tolist(), "labels": out["labels"].tolist()}), flush=True)


def main(mode, data, workdir=None, *rest):
  if mode == "eval":
    return evaluate(data, *((workdir,) + rest if workdir else ()))
  from deform3d.train import distributed
  if mode == "multi":
    pid, port = int(rest[0]), int(rest[1])
    how = distributed.initialize(f"localhost:{port}", 2, pid)
  else:
    how = distributed.initialize()
  from data_pipelines import input_pipeline, loaders
  from data_pipelines.skeletons import COCO17, flip_permutation
  from deform3d.train import sharding, trainer

  assert jax.device_count() == 8, (how, jax.devices())
  config = config_for(data)
  if mode == "multi":
    assert jax.process_count() == 2 and jax.local_device_count() == 4
    make_iter = lambda s: loaders.train_iter(config, s)
  else:
    # The global batch of the 2-process run: process 0's local batch, then process 1's.
    def make_iter(start):
      its = [input_pipeline.iterate(input_pipeline.make_dataset(
          data, "train", num_frames=config.num_frames, image_size=config.image_size,
          num_joints=len(COCO17), batch_size=config.batch_size // 2, train=True,
          seed=config.seed, flip_perm=flip_permutation(COCO17),
          crop_scale=tuple(config.dataset.crop_scale), process_index=i, process_count=2,
          shuffle_buffer=config.dataset.shuffle_buffer, cache=config.dataset.cache,
          start_position=start * config.batch_size // 2, num_classes=config.model.num_classes,
          max_persons=config.dataset.max_persons))
          for i in range(2)]
      while True:
        parts = [next(it) for it in its]
        yield {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  out = trainer.train(config, workdir, make_train_iter=make_iter, mesh=sharding.make_mesh(),
                      stop_after=STEPS, log=lambda s: None)
  if jax.process_index() == 0:
    print("LOSSES " + json.dumps([l for _, l in out["losses"]]), flush=True)


if __name__ == "__main__":
  main(*sys.argv[1:])
