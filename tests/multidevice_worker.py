"""Run by test_multidevice.py in a subprocess with 8 simulated CPU devices.

Trains the micro config (``tests.micro_config``) on a 1-device mesh and on an 8-device mesh
(replicated and FSDP parameters) and prints the loss curves as JSON.

  multidevice_worker.py DATA WORKDIR
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from data_pipelines import loaders  # noqa: E402
from deform3d.train import sharding, trainer  # noqa: E402
from tests import micro_config  # noqa: E402

STEPS = 8  # of the config's total_steps: its compiled step, as the other tests of the variant


def main(data, tmp):
  assert jax.device_count() == 8, jax.devices()
  curves = {}
  for name, devices, mode in (("1dev", jax.devices()[:1], "replicated"),
                              ("8dev", jax.devices(), "replicated"),
                              ("8dev_fsdp", jax.devices(), "fsdp")):
    config = micro_config(data)
    config.log_every = 1
    config.eval_every = 0
    config.checkpoint_every = 100
    config.param_sharding = mode
    config.fsdp_min_size = 256  # shard most arrays of the micro model
    out = trainer.train(config, os.path.join(tmp, name),
                        make_train_iter=lambda s, c=config: loaders.train_iter(c, s),
                        mesh=sharding.make_mesh(devices), stop_after=STEPS, log=lambda s: None)
    curves[name] = [l for _, l in out["losses"]]
    if mode == "fsdp":
      specs = [s.spec for s in jax.tree.leaves(out["trainer"].state_sharding.params)]
      curves["fsdp_sharded_arrays"] = sum(any(a is not None for a in sp) for sp in specs)
  print("CURVES " + json.dumps(curves))


if __name__ == "__main__":
  main(*sys.argv[1:])
