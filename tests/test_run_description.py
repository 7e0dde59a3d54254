"""A run says what it runs: ``Trainer.describe`` (platform, devices, the deformable attention's
path after ``auto``, compute dtype) and ``loaders.describe`` (the local pipeline or the tf.data
service), which ``launch/train.py`` and ``launch/eval.py`` print first."""
import jax
import pytest

from configs.common import clip_shapes, load
from deform3d.models import build_model
from deform3d.train import sharding
from deform3d.train.trainer import Trainer


@pytest.mark.parametrize("kernel,want", [
    ("xla", "deformable attention: XLA ops (fast modules, attention_kernel=xla)"),
    ("pallas", "deformable attention: fused Pallas kernel in interpret mode"),
    ("auto", "deformable attention: the fused op's XLA form (attention_kernel=auto on a CPU)"),
])
def test_trainer_names_platform_devices_attention_path_and_dtype(kernel, want):
  config = load("embedded:variant=tiny")
  config.model.attention_kernel = kernel
  config.model.dtype = "bfloat16"
  lines = Trainer(config, sharding.make_mesh(jax.devices()[:1]), clip_shapes(config)).describe()
  assert lines[0].startswith("platform: cpu (cpu), 1 devices in the mesh {'data': 1}, 1 processes")
  assert lines[1].startswith(want), lines[1]
  assert lines[2] == "compute dtype: bfloat16 (parameters float32, replicated)"


def test_attention_path_follows_the_platform_after_auto():
  auto = build_model(dict(variant="tiny", num_classes=3, attention_kernel="auto"))
  assert auto.attention_path("gpu") == "fused Pallas kernel, Triton (attention_kernel=auto)"
  assert auto.attention_path("tpu") == "fused Pallas kernel, Mosaic TPU (attention_kernel=auto)"
  plain = build_model(dict(variant="tiny", num_classes=3, attention_kernel="auto", fast=False))
  assert plain.attention_path("gpu").startswith("XLA ops (plain modules")


def test_input_description_names_the_service_or_the_local_pipeline():
  from data_pipelines import loaders
  config = load("embedded")
  assert loaders.describe(config) == (
      "input: the local tf.data pipeline of each process, reading data/embedded (train); frames "
      "resized on the host")
  config.dataset.service = "grpc://10.0.0.2:5050"
  assert loaders.describe(config) == (
      "input: the tf.data service at grpc://10.0.0.2:5050, reading data/embedded (train)")
  # Evaluation never goes through the service.
  assert loaders.describe(config, "val").startswith("input: the local tf.data pipeline")
  ntu = load("ntu")
  assert loaders.describe(ntu, "test").endswith("frames resized on the accelerator")
