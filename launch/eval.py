"""Evaluate a trained checkpoint: ``python launch/eval.py --config C --workdir W [--split test]``.

Restores the latest (or ``--step``) checkpoint of ``--workdir``, runs the jitted multi-clip
evaluation on ``--split`` and writes ``metrics.json`` (top-1, top-5, mean class accuracy,
confusion matrix) and ``confusion.png`` to ``WORKDIR/eval_SPLIT``.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir with checkpoints/.",
                               required=True)
_SPLIT = flags.DEFINE_string("split", None, "Split to evaluate (default: the config's eval split).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
_OUT = flags.DEFINE_string("out", None, "Output directory (default: WORKDIR/eval_SPLIT).")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  import jax
  from data_pipelines import loaders
  from data_pipelines.records import read_classes
  from deform3d.train import report, trainer

  config = _CONFIG.value
  split = _SPLIT.value or config.dataset.eval_split
  try:
    tr, state, step = trainer.load_trained(config, _WORKDIR.value, loaders.input_shapes(config),
                                           _STEP.value)
  except FileNotFoundError as e:
    raise SystemExit(str(e))
  if jax.process_index() == 0:
    for line in tr.describe() + [loaders.describe(config, split)]:
      print(line, flush=True)
  metrics = tr.evaluate(state.params, loaders.eval_iter(config, split))
  if jax.process_index() == 0:
    out = _OUT.value or os.path.join(_WORKDIR.value, f"eval_{split}")
    report.write(metrics, read_classes(config.dataset.data_dir), out)
    print(f"step {step} {split}: top1 {metrics['top1']:.4f} | top5 {metrics['top5']:.4f} | "
          f"mean class acc {metrics['mean_class_accuracy']:.4f} | {metrics['num_examples']} "
          f"videos -> {out}", flush=True)


if __name__ == "__main__":
  from deform3d import host_malloc
  host_malloc.maybe_reexec()  # with DEFORM3D_HOST_MALLOC=1 (docs/performance.md)
  app.run(main)
