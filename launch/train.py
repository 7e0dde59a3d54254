"""Train deform3d: ``python launch/train.py --config configs/embedded.py --workdir DIR``.

Config values are overridden with ``--config.KEY=VALUE`` (e.g. ``--config.batch_size=64``);
unknown keys are errors. Re-running with the same ``--workdir`` resumes from its latest
checkpoint. The embedded dataset is generated on first use. Multi-device on one host: set
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` to simulate 8 CPU devices.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and logs.",
                               required=True)
_STOP_AFTER = flags.DEFINE_integer("stop_after", None,
                                   "Leave after this many steps of this run (simulated stop).")
_EVAL_TEST = flags.DEFINE_bool("eval_test", True, "Evaluate on the test split at the end.")
_COORD = flags.DEFINE_string("coordinator_address", None,
                             "Multi-process: host:port of process 0 (see docs/scaling.md).")
_NPROC = flags.DEFINE_integer("num_processes", None, "Multi-process: number of processes.")
_PID = flags.DEFINE_integer("process_id", None, "Multi-process: this process's index.")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  import jax
  from deform3d.train import distributed
  how = distributed.initialize(_COORD.value, _NPROC.value, _PID.value)
  from data_pipelines import embedded, loaders
  from deform3d.train import trainer

  config = _CONFIG.value
  prepared = None
  if config.dataset.name == "embedded":
    if jax.process_index() == 0:
      # The steps compile here while a child process writes the data (the compile needs only
      # the config's clip shapes): about 13 s less on 2 cores (docs/results.md).
      def compile_steps():
        import time
        from configs.common import clip_shapes
        from deform3d.train import sharding
        start = time.time()
        prepared = trainer.Trainer(config, sharding.make_mesh(), clip_shapes(config))
        prepared.compile()
        print(f"compiled the training and evaluation steps ({time.time() - start:.1f}s)",
              flush=True)
        return prepared
      prepared = embedded.ensure(config.dataset.data_dir, meanwhile=(
          compile_steps if jax.process_count() == 1 else None))
    if jax.process_count() > 1:  # the others wait until process 0 has written the data
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices("embedded dataset ready")
  main_process = jax.process_index() == 0
  log = (lambda s: print(s, flush=True)) if main_process else (lambda s: None)
  log(f"devices: {jax.device_count()} ({jax.devices()[0].platform}), "
      f"processes: {jax.process_count()} ({how})")
  log(loaders.describe(config))
  result = trainer.train(config, _WORKDIR.value,
                         make_train_iter=lambda start: loaders.train_iter(config, start),
                         make_eval_iter=lambda: loaders.eval_iter(config),
                         stop_after=_STOP_AFTER.value, log=log, prepared=prepared)
  if _EVAL_TEST.value and _STOP_AFTER.value is None:
    from deform3d.train import report
    split = "test" if config.dataset.name == "embedded" else config.dataset.eval_split
    metrics = result["trainer"].evaluate(result["state"].params, loaders.eval_iter(config, split))
    if jax.process_index() == 0:
      from data_pipelines.records import read_classes
      out = report.write(metrics, read_classes(config.dataset.data_dir),
                         os.path.join(_WORKDIR.value, f"eval_{split}"))
      log(f"{split}: top1 {metrics['top1']:.4f} top5 {metrics['top5']:.4f} mean class acc "
          f"{metrics['mean_class_accuracy']:.4f} -> {out}")


if __name__ == "__main__":
  from deform3d import host_malloc
  host_malloc.maybe_reexec()  # with DEFORM3D_HOST_MALLOC=1 (docs/performance.md)
  app.run(main)
