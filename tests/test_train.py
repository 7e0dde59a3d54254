"""Training loop, checkpoint resume, metrics, reports and the launch script's config handling."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

pytest.importorskip("tensorflow")

from configs import embedded as embedded_config  # noqa: E402
from data_pipelines import embedded, loaders  # noqa: E402
from deform3d.train import report, trainer  # noqa: E402
from deform3d.train.metrics import classification_metrics  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_SPLITS = {"train": (40, 2, 11), "val": (20, 1, 12), "test": (20, 1, 13)}


def tiny_config(data_dir):
  """configs/embedded.py's small local variant, reading ``data_dir``."""
  c = embedded_config.get_config("variant=tiny")
  c.dataset.data_dir = data_dir
  return c


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("embedded"))
  embedded.build(d, sizes=TINY_SPLITS, num_frames=8, size=32, verbose=False)
  return d


def run(config, workdir, **kw):
  lines = []
  out = trainer.train(config, workdir, make_train_iter=lambda s: loaders.train_iter(config, s),
                      make_eval_iter=lambda: loaders.eval_iter(config), log=lines.append, **kw)
  return out, lines


def test_short_training_run_checkpoints_and_evaluates(data_dir, tmp_path):
  config = tiny_config(data_dir)
  out, lines = run(config, str(tmp_path))
  assert int(out["state"].step) == 12
  assert all(np.isfinite(l) for _, l in out["losses"])
  assert [s for s, _ in out["losses"]] == list(range(2, 13, 2))
  assert any("steps/s" in l and "ETA" in l for l in lines)
  steps = sorted(int(p) for p in os.listdir(tmp_path / "checkpoints") if p.isdigit())
  assert steps == [4, 8, 12]
  ev = out["eval"]
  assert ev["num_examples"] == 20
  assert ev["confusion_matrix"].sum() == 20
  assert 0.0 <= ev["top1"] <= ev["top5"] <= 1.0
  with open(tmp_path / "config.json") as fh:
    assert json.load(fh)["model"]["variant"] == "tiny"
  with open(tmp_path / "model.json") as fh:  # the variant's sizes, resolved
    model = json.load(fh)
  assert (model["embed_dim"], model["depth"], model["joint_strides"]) == (32, 2, [1, 2])
  # The run's progress lines are kept in log.txt and plot into a PNG.
  png = tmp_path / "curves.png"
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "plot_curves.py"),
                         "--out", str(png), f"tiny={tmp_path}"], capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 0, proc.stderr
  with open(png, "rb") as fh:
    assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
  sys.path.insert(0, os.path.join(ROOT, "launch"))
  import plot_curves
  loss, top1 = plot_curves.parse(str(tmp_path))
  assert [s for s, _ in loss] == list(range(2, 13, 2))
  assert loss[-1][1] == pytest.approx(out["losses"][-1][1], rel=1e-3)
  assert top1 == [(12, pytest.approx(ev["top1"], abs=1e-4))]


def test_stopped_run_resumes_from_last_checkpoint(data_dir, tmp_path):
  config = tiny_config(data_dir)
  first, _ = run(config, str(tmp_path), stop_after=6)  # "preempted" after step 6
  assert int(first["state"].step) == 6
  saved = sorted(int(p) for p in os.listdir(tmp_path / "checkpoints") if p.isdigit())
  assert saved[-1] == 6  # the end of a run is always saved
  first_params = jax.tree.map(np.asarray, first["state"].params)
  second, lines = run(config, str(tmp_path))
  assert "resumed from checkpoint at step 6" in lines[0]
  # launch/eval.py's path: restore a chosen (non-latest) step.
  mngr = trainer.checkpoint_manager(str(tmp_path), config)
  older = trainer.restore_step(second["trainer"], mngr, config, 6)
  for a, b in zip(jax.tree.leaves(first_params), jax.tree.leaves(older.params)):
    np.testing.assert_array_equal(a, np.asarray(b))
  assert int(second["state"].step) == 12
  assert second["losses"][0][0] == 8  # continued, not restarted
  # The restored parameters are the saved ones: a no-op resume at the end changes nothing.
  third, lines = run(config, str(tmp_path))
  assert "resumed from checkpoint at step 12" in lines[0]
  for a, b in zip(jax.tree.leaves(second["state"].params), jax.tree.leaves(third["state"].params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_workdir_of_another_config_is_refused(data_dir, tmp_path):
  config = tiny_config(data_dir)
  run(config, str(tmp_path), stop_after=4)
  other = tiny_config(data_dir)
  other.model.embed_dim = 48
  with pytest.raises(trainer.ConfigMismatchError, match="another configuration"):
    run(other, str(tmp_path))


def test_fingerprint_ignores_only_how_the_model_is_computed(data_dir):
  config = tiny_config(data_dir)
  want = trainer.fingerprint(config)
  assert trainer.fingerprint_diff(want, want) == []
  # A checkpoint written before ``sampler_backward`` existed, or with other computation-only
  # settings, is the same model.
  old = {**want, "model": {k: v for k, v in want["model"].items() if k != "sampler_backward"}}
  old["model"]["fast"], old["model"]["remat"] = not want["model"]["fast"], True
  assert trainer.fingerprint_diff(old, want) == []
  # Anything else is another model.
  other = {**want, "model": {**want["model"], "embed_dim": 48, "dtype": "bfloat16"}}
  assert trainer.fingerprint_diff(other, want) == ["dtype", "embed_dim"]
  assert trainer.fingerprint_diff({**want, "num_classes": 5}, want) == ["num_classes"]


def test_classification_metrics_by_hand():
  logits = np.array([[3, 2, 1, 0], [0, 3, 2, 1], [0, 1, 3, 2], [3, 0, 1, 2], [0, 1, 2, 3.0]])
  labels = np.array([0, 1, 3, 3, 3])
  m = classification_metrics(logits, labels)
  assert m["top1"] == pytest.approx(3 / 5)  # rows 0, 1, 4 right
  assert m["top5"] == 1.0  # 4 classes: top-5 = top-4
  # per class recall: class0 1/1, class1 1/1, class3 1/3 -> mean 7/9
  assert m["mean_class_accuracy"] == pytest.approx((1 + 1 + 1 / 3) / 3)
  np.testing.assert_array_equal(m["confusion_matrix"][3], [1, 0, 1, 1])


def test_report_writes_png_and_json(tmp_path):
  rng = np.random.default_rng(0)
  m = classification_metrics(rng.standard_normal((30, 3)), rng.integers(0, 3, 30))
  report.write(m, ["a", "b", "c"], str(tmp_path))
  with open(tmp_path / "metrics.json") as fh:
    saved = json.load(fh)
  assert saved["top1"] == m["top1"] and np.sum(saved["confusion_matrix"]) == 30
  with open(tmp_path / "confusion.png", "rb") as fh:
    assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
  with pytest.raises(ValueError, match="class list has 2"):
    report.write(m, ["a", "b"], str(tmp_path))


def test_unknown_config_key_is_an_error(tmp_path):
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "train.py"),
                         "--config", os.path.join(ROOT, "configs", "embedded.py"),
                         "--workdir", str(tmp_path), "--config.bach_size=4"],
                        capture_output=True, text=True, timeout=120, cwd=ROOT)
  assert proc.returncode != 0
  assert "bach_size" in proc.stderr


def test_all_configs_load_and_build():
  from configs.common import load
  from data_pipelines.skeletons import LAYOUTS
  from deform3d.models import build_model
  from tests.test_fast_paths import ALL_CONFIGS
  files = {f[:-3] for f in os.listdir(os.path.join(ROOT, "configs"))
           if f.endswith(".py") and f not in ("__init__.py", "common.py")}
  assert files == {s.split(":")[0] for s in ALL_CONFIGS}
  for spec in ALL_CONFIGS:
    c = load(spec)
    model = build_model(c.model)  # validates keys and the variant
    assert c.dataset.joint_layout in LAYOUTS, spec
    assert len(model.temporal_strides) == model.depth, spec
    assert c.warmup_steps < c.total_steps, spec
    assert set(c) >= {"num_frames", "image_size", "dataset", "model"}, spec
  assert load("ntu:split=xset120,pose=kinect").dataset.data_dir.endswith(
      "ntu_rgbd/ntu120_xset/1.1.0")
  assert load("ntu:split=xset120,pose=kinect").dataset.joint_layout == "ntu25"
  assert load("embedded:pose_only").model.use_rgb is False  # a bare value sets the first key
  for bad, match in (("ntu:split=xsub", "split='xsub' is not one of"),
                     ("ntu:foo=1", "unknown config argument 'foo'"),
                     ("embedded:variant=huge", "variant='huge' is not one of"),
                     ("finegym:runlocal=maybe", "expected true or false")):
    with pytest.raises(ValueError, match=match):
      load(bad)


def test_input_shapes_agree_from_config_element_spec_and_batch(data_dir):
  """The three ways to get a model's input shapes give the same per-clip shapes: from the config
  alone (no TensorFlow), from the dataset's element spec, and from a real batch."""
  from configs.common import clip_shapes
  for persons, keypoints in ((2, (2, 4, 17, 3)), (1, (4, 17, 3))):  # (P, T, J, 3) / (T, J, 3)
    config = tiny_config(data_dir)
    config.dataset.max_persons = persons
    want = {"frames": (4, 32, 32, 3), "keypoints": keypoints}
    assert clip_shapes(config) == want
    assert loaders.input_shapes(config) == want
    assert trainer.input_shapes(next(loaders.train_iter(config))) == want
    assert trainer.input_shapes(next(loaders.eval_iter(config))) == want  # (B, K, ...) batches


def test_restore_checkpoint_for_evaluation_names_missing_steps(data_dir, tmp_path):
  from deform3d.train.sharding import make_mesh
  config = tiny_config(data_dir)  # checkpoints every 4 steps; this run stops after 4
  tr = trainer.Trainer(config, make_mesh(), loaders.input_shapes(config))
  with pytest.raises(FileNotFoundError, match="no checkpoint found under checkpoints/"):
    trainer.restore_checkpoint(tr, str(tmp_path), config)
  out, _ = run(config, str(tmp_path), stop_after=4)
  state, step = trainer.restore_checkpoint(tr, str(tmp_path), config)
  assert step == 4 and int(state.step) == 4
  for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(out["state"].params)):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(FileNotFoundError, match=r"no checkpoint at step 3; have \[4\]"):
    trainer.restore_checkpoint(tr, str(tmp_path), config, step=3)
