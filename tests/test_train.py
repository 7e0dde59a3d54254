"""Training loop, checkpoint resume, metrics, reports and the launch script's config handling.

The loop's mechanics (checkpoints, resume, evaluation, input wait, steps compiled ahead, the
command line) run the micro variant (``tests.micro_config``) on the session's micro records;
the tests of what the tiny model is (its fingerprint, its block layouts, its clip shapes) and the
learning run keep the tiny variant."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

pytest.importorskip("tensorflow")

from data_pipelines import embedded, loaders  # noqa: E402
from deform3d.train import report, trainer  # noqa: E402
from deform3d.train.metrics import classification_metrics  # noqa: E402
from tests import embedded_config, fresh_python, micro_config  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(data_dir):
  """configs/embedded.py's small local variant, reading ``data_dir``."""
  return embedded_config(data_dir, "tiny")


@pytest.fixture(scope="module")
def data_dir(micro_data):
  """The session's micro records (tests/conftest.py): 4 frames of 16 px, 40 / 20 / 20 videos."""
  return micro_data


def run(config, workdir, **kw):
  lines = []
  out = trainer.train(config, workdir, make_train_iter=lambda s: loaders.train_iter(config, s),
                      make_eval_iter=lambda: loaders.eval_iter(config), log=lines.append, **kw)
  return out, lines


@pytest.mark.slow
def test_short_training_run_checkpoints_and_evaluates(data_dir, tmp_path):
  config = micro_config(data_dir)
  out, lines = run(config, str(tmp_path))
  assert int(out["state"].step) == 12
  assert all(np.isfinite(l) for _, l in out["losses"])
  assert [s for s, _ in out["losses"]] == list(range(2, 13, 2))
  assert any("steps/s" in l and "ETA" in l for l in lines)
  shares = [float(l.split("| input wait ")[1].rstrip("%")) for l in lines if l.startswith("step ")]
  assert len(shares) == 6 and all(0 <= x <= 100 for x in shares), shares
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
  assert (model["embed_dim"], model["depth"], model["joint_strides"]) == (32, 1, [2])
  # The run's progress lines are kept in log.txt; the run plots them into its curves.png, and
  # launch/plot_curves.py plots runs side by side.
  with open(tmp_path / "curves.png", "rb") as fh:
    assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
  png = tmp_path / "side_by_side.png"
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "plot_curves.py"),
                         "--out", str(png), f"tiny={tmp_path}", f"again={tmp_path}/log.txt"],
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  with open(png, "rb") as fh:
    assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
  from deform3d.train import curves
  loss, top1 = curves.parse(str(tmp_path))
  assert [s for s, _ in loss] == list(range(2, 13, 2))
  assert loss[-1][1] == pytest.approx(out["losses"][-1][1], rel=1e-3)
  assert top1 == [(12, pytest.approx(ev["top1"], abs=1e-4))]


@pytest.mark.slow
def test_stopped_run_resumes_from_last_checkpoint(data_dir, tmp_path):
  config = micro_config(data_dir)
  first, _ = run(config, str(tmp_path), stop_after=6)  # "preempted" after step 6
  assert int(first["state"].step) == 6
  saved = sorted(int(p) for p in os.listdir(tmp_path / "checkpoints") if p.isdigit())
  assert saved[-1] == 6  # the end of a run is always saved
  first_params = jax.tree.map(np.asarray, first["state"].params)
  second, lines = run(config, str(tmp_path))
  resumed = lambda lines: [l for l in lines if l.startswith("resumed from checkpoint")]
  assert resumed(lines) == [f"resumed from checkpoint at step 6 in {tmp_path}"]
  # launch/eval.py's path: restore a chosen (non-latest) step.
  mngr = trainer.checkpoint_manager(str(tmp_path), config)
  older = trainer.restore_step(second["trainer"], mngr, config, 6)
  for a, b in zip(jax.tree.leaves(first_params), jax.tree.leaves(older.params)):
    np.testing.assert_array_equal(a, np.asarray(b))
  assert int(second["state"].step) == 12
  assert second["losses"][0][0] == 8  # continued, not restarted
  from deform3d.train import curves  # the curves cover both parts of the run
  assert [s for s, _ in curves.parse(str(tmp_path))[0]] == list(range(2, 13, 2))
  assert os.path.getsize(tmp_path / "curves.png") > 0
  # The restored parameters are the saved ones: a no-op resume at the end changes nothing.
  third, lines = run(config, str(tmp_path))
  assert resumed(lines) == [f"resumed from checkpoint at step 12 in {tmp_path}"]
  for a, b in zip(jax.tree.leaves(second["state"].params), jax.tree.leaves(third["state"].params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.slow
def test_workdir_of_another_config_is_refused(data_dir, tmp_path):
  config = micro_config(data_dir)
  run(config, str(tmp_path), stop_after=4)
  other = micro_config(data_dir)
  other.model.embed_dim = 48
  with pytest.raises(trainer.ConfigMismatchError,
                     match=r"another configuration \(differs in model.embed_dim\)"):
    run(other, str(tmp_path))
  # Another clip length sizes the time embedding otherwise: refused by name, not by orbax.
  longer = micro_config(data_dir)
  longer.num_frames = 8
  with pytest.raises(trainer.ConfigMismatchError, match=r"\(differs in num_frames\)"):
    run(longer, str(tmp_path))


@pytest.mark.slow
def test_input_wait_share_is_the_time_spent_getting_batches(data_dir, tmp_path):
  """A data source that takes 0.3 s per batch leaves the loop waiting most of the time; the
  same batches from memory do not."""
  import time
  config = micro_config(data_dir)
  config.log_every, config.eval_every = 2, 0
  first = next(loaders.train_iter(config, 0))

  def batches(delay):
    def make(start):
      while True:
        time.sleep(delay)
        yield first
    return make

  shares = {}
  for delay in (0.3, 0.0):
    lines = []
    trainer.train(config, str(tmp_path / f"d{delay}"), make_train_iter=batches(delay),
                  stop_after=6, log=lines.append)
    shares[delay] = [float(l.split("| input wait ")[1].rstrip("%")) / 100 for l in lines
                     if l.startswith("step ")]
  # The first window holds the compile; the later ones are steady.
  assert min(shares[0.3][1:]) > 0.6, shares
  assert max(shares[0.0][1:]) < min(shares[0.3][1:]), shares


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
  # Written before ``scan`` and ``merge_in_block`` existed: the loop with merges in the blocks,
  # which a scanned model (merging between blocks) is not.
  legacy = {**want, "model": {k: v for k, v in want["model"].items()
                              if k not in ("scan", "merge_in_block")}}
  assert trainer.fingerprint_diff(legacy, want) == []
  config.model.scan = True
  assert trainer.fingerprint_diff(legacy, trainer.fingerprint(config)) == ["merge_in_block"]
  # Written before the cross-token and pose options existed: their old function, the same
  # model; the same settings changed are another.
  added = ("cross_init", "cross_init_scale", "pose_norm", "cross_rgb_scale")
  config.model.scan = False
  want = trainer.fingerprint(config)
  before = {**want, "model": {k: v for k, v in want["model"].items() if k not in added}}
  assert trainer.fingerprint_diff(before, want) == []
  config.model.pose_norm, config.model.cross_rgb_scale = True, 0.0
  assert trainer.fingerprint_diff(before, trainer.fingerprint(config)) == ["cross_rgb_scale",
                                                                           "pose_norm"]
  # cross_rgb_scale=None means "as layer_scale": a value equal to it is the same model (how a
  # workdir of the earlier default is named on the command line, where None cannot be written).
  config.model.pose_norm, config.model.cross_rgb_scale = False, config.model.layer_scale
  assert trainer.fingerprint_diff(before, trainer.fingerprint(config)) == []
  config.model.cross_rgb_scale = config.model.layer_scale / 2
  assert trainer.fingerprint_diff(before, trainer.fingerprint(config)) == ["cross_rgb_scale"]
  # The clip shapes that size parameters (the time embedding: num_frames), by config path;
  # checkpoints written before they were recorded are not checked on them.
  config = tiny_config(data_dir)
  want = trainer.fingerprint(config)
  assert want["inputs"] == {"num_frames": 4, "image_size": 32, "dataset.max_persons": 2,
                            "dataset.joint_layout": "coco17"}
  config.num_frames, config.dataset.max_persons = 8, 1
  assert trainer.fingerprint_diff(want, trainer.fingerprint(config)) == ["dataset.max_persons",
                                                                         "num_frames"]
  unrecorded = {k: v for k, v in want.items() if k != "inputs"}
  assert trainer.fingerprint_diff(unrecorded, trainer.fingerprint(config)) == []


@pytest.mark.slow
def test_checkpoint_restores_across_block_layouts(data_dir, tmp_path):
  """A checkpoint of the loop (``block{i}``, merges between blocks) resumes as stacked stages
  (``scan=True``) and back: parameters and optimizer moments converted, equal."""
  from deform3d.models import convert
  from deform3d.train import sharding as shd
  loop = tiny_config(data_dir)
  loop.model.scan, loop.model.merge_in_block = False, False
  out, _ = run(loop, str(tmp_path), stop_after=2)
  scanned = tiny_config(data_dir)
  scanned.model.scan = True
  shapes = loaders.input_shapes(scanned)
  tr = trainer.Trainer(scanned, shd.make_mesh(), shapes)
  state, step = trainer.restore_checkpoint(tr, str(tmp_path), scanned)
  assert step == 2 and convert.layout(state.params) == "stacked"
  want = convert.stack_blocks(jax.device_get(out["state"]), tr.model)
  for a, b in zip(jax.tree.leaves(jax.device_get(state)), jax.tree.leaves(want)):
    np.testing.assert_array_equal(a, b)
  assert len(jax.tree.leaves(state.opt_state)) == len(jax.tree.leaves(want.opt_state)) > 0
  # And the other way: a scanned model trained through the real pipeline (drop paths drawn
  # before the loop, per-layer rngs), its checkpoint restored by the loop.
  out_s, _ = run(scanned, str(tmp_path / "scanned"), stop_after=2)
  assert all(np.isfinite(l) for _, l in out_s["losses"])
  assert convert.layout(out_s["state"].params) == "stacked"
  tl = trainer.Trainer(loop, shd.make_mesh(), shapes)
  back, _ = trainer.restore_checkpoint(tl, str(tmp_path / "scanned"), loop)
  assert convert.layout(back.params) == "per_block"
  want = convert.unstack_blocks(jax.device_get(out_s["state"]), tr.model)
  for a, b in zip(jax.tree.leaves(jax.device_get(back)), jax.tree.leaves(want)):
    np.testing.assert_array_equal(a, b)


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


@pytest.mark.slow
def test_restore_checkpoint_for_evaluation_names_missing_steps(data_dir, tmp_path):
  from deform3d.train.sharding import make_mesh
  config = micro_config(data_dir)  # checkpoints every 4 steps; this run stops after 4
  tr = trainer.Trainer(config, make_mesh(), loaders.input_shapes(config))
  with pytest.raises(FileNotFoundError, match="no checkpoint found under checkpoints/"):
    trainer.restore_checkpoint(tr, str(tmp_path), config)
  out, _ = run(config, str(tmp_path), stop_after=4)
  state, step = trainer.restore_checkpoint(tr, str(tmp_path), config)
  assert step == 4 and int(state.step) == 4
  # The whole state as saved: parameters and the optimizer's moments and count (a resume with a
  # fresh optimizer state would restart Adam's moments and the schedule's count).
  assert len(jax.tree.leaves(state.opt_state)) > len(jax.tree.leaves(state.params))
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(out["state"]), strict=True):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(FileNotFoundError, match=r"no checkpoint at step 3; have \[4\]"):
    trainer.restore_checkpoint(tr, str(tmp_path), config, step=3)


class _ClipValueModel:
  """Stands in for the model in ``Trainer.eval_step``: a clip's logits are its first frame's
  first ``C`` joints' x coordinates, so each clip's output is known in advance."""

  def __init__(self, num_classes):
    self.num_classes = num_classes

  def apply(self, variables, frames, keypoints, train=False):
    assert not train
    return keypoints[:, 0, :self.num_classes, 0] + 0.0 * frames.mean()


def test_evaluation_averages_each_videos_own_clips_and_keeps_its_label(data_dir, rng):
  """Per-clip logits known in advance: every video's logits must be the mean of its own K clips
  (a ``(K, B)`` for ``(B, K)`` reshape mixes videos), paired with its own label, padded examples
  left out, and top-1 / top-5 as computed here by hand (12 classes, so top-5 is not trivially 1)."""
  from deform3d.train.sharding import make_mesh
  config = tiny_config(data_dir)
  config.batch_size = 4
  c, b, k, t, j = 12, 4, 3, 4, 17
  tr = trainer.Trainer(config, make_mesh(), {"frames": (t, 8, 8, 3), "keypoints": (t, j, 3)})
  tr.model = _ClipValueModel(c)  # read when eval_step is first traced
  params = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), tr.abstract_state.params)
  n = 7  # two batches of 4, the second padded with one masked example
  clip_logits = rng.standard_normal((n, k, c)).astype(np.float32)
  labels = rng.integers(0, c, n).astype(np.int32)
  video_logits = clip_logits.mean(1)
  labels[:3] = video_logits[:3].argmax(-1)  # some right, the others (mostly) wrong
  batches = []
  for start in (0, 4):
    sl = slice(start, min(start + b, n))
    m = sl.stop - sl.start
    keypoints = np.zeros((b, k, t, j, 3), np.float32)
    keypoints[:m, :, 0, :c, 0] = clip_logits[sl]
    keypoints[m:, :, 0, :c, 0] = 100.0  # padding that would win every argmax if it were kept
    batches.append({"frames": np.zeros((b, k, t, 8, 8, 3), np.float32), "keypoints": keypoints,
                    "label": np.pad(labels[sl], (0, b - m)),
                    "mask": np.pad(np.ones(m, np.float32), (0, b - m))})
  out = tr.evaluate(params, iter(batches))
  np.testing.assert_allclose(out["logits"], video_logits, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(out["labels"], labels)
  ranks = np.argsort(-video_logits, axis=1)
  assert out["top1"] == pytest.approx(np.mean(ranks[:, 0] == labels))
  assert out["top5"] == pytest.approx(np.mean([y in r[:5] for y, r in zip(labels, ranks)]))
  assert out["num_examples"] == n and out["top5"] < 1.0


def test_top5_and_mean_class_accuracy_with_more_than_five_classes():
  """7 classes: a label ranked 6th or 7th is outside the top 5."""
  logits = np.array([[7, 6, 5, 4, 3, 2, 1],    # label 0: rank 1
                     [7, 6, 5, 4, 3, 2, 1],    # label 4: rank 5
                     [7, 6, 5, 4, 3, 2, 1],    # label 5: rank 6 -> outside
                     [1, 2, 3, 4, 5, 6, 7],    # label 0: rank 7 -> outside
                     [1, 2, 3, 4, 5, 6, 7.]])  # label 6: rank 1
  labels = np.array([0, 4, 5, 0, 6])
  m = classification_metrics(logits, labels)
  assert m["top1"] == pytest.approx(2 / 5)
  assert m["top5"] == pytest.approx(3 / 5)
  # recall: class 0 1/2, class 4 0/1, class 5 0/1, class 6 1/1 -> mean over present classes
  assert m["mean_class_accuracy"] == pytest.approx((0.5 + 0 + 0 + 1) / 4)
  np.testing.assert_array_equal(m["confusion_matrix"][0], [1, 0, 0, 0, 0, 0, 1])


LEARN_SPLITS = {"train": (240, 2, 21), "val": (96, 1, 22)}


@pytest.mark.slow
@pytest.mark.heavy
def test_training_learns_through_the_real_trainer_and_pipeline(tmp_path):
  """The tiny model, trained by ``trainer.train`` on embedded records read by the real input
  pipeline, must learn: on 96 held-out clips of 12 classes (chance 0.083) its top-1 must reach
  0.15, and its loss must fall from ln 12 = 2.48 to below 2.1. Measured (seeds 0, 1, 2; 300
  steps): top-1 0.344 / 0.250 / 0.219, last logged loss 1.72 / 1.63 / 1.76. A step that applies
  no update, flips the update's sign or has a zero learning rate stays at chance and ln 12."""
  data = str(tmp_path / "data")
  embedded.build(data, sizes=LEARN_SPLITS, num_frames=8, size=32, verbose=False)
  config = tiny_config(data)
  config.batch_size, config.total_steps, config.warmup_steps = 16, 300, 10
  config.learning_rate, config.model.drop_path = 3e-3, 0.0
  config.log_every, config.eval_every, config.checkpoint_every = 50, 300, 300
  out, _ = run(config, str(tmp_path / "work"))
  losses = [l for _, l in out["losses"]]
  assert losses[0] > 2.2  # the first 50 steps start near ln 12 (zero-initialised head)
  assert losses[-1] < 2.1, losses
  assert out["eval"]["num_examples"] == 96
  assert out["eval"]["top1"] >= 0.15, out["eval"]["top1"]


def test_training_code_never_imports_tensorflow():
  """The model, ops, training, explanation code and the configs load without TensorFlow: every
  ``deform3d`` module imported in a fresh process leaves ``tensorflow`` out of ``sys.modules``,
  and the benchmark harness (``benchmarks/``, kept out of the installed packages) too."""
  code = ("import importlib, pkgutil, sys, deform3d\n"
          "names = [m.name for m in pkgutil.walk_packages(deform3d.__path__, 'deform3d.')]\n"
          "for n in names: importlib.import_module(n)\n"
          "import configs.embedded, configs.ntu, configs.finegym, configs.pennaction\n"
          "print(len(names), sorted({m.split('.')[0] for m in sys.modules} & "
          "{'tensorflow', 'tensorflow_datasets', 'data_pipelines', 'benchmarks'}))\n")
  count, loaded = fresh_python(code).split(" ", 1)
  assert int(count) >= 20  # the walk found the package's modules
  assert loaded == "[]", loaded


def _tb_scalars(logdir):
  """``{tag: [(step, value)]}`` of the event files in ``logdir`` (TFRecord files of ``Event``
  protos, read with TensorFlow and tensorboardX's proto, not with the writer under test)."""
  import tensorflow as tf
  from tensorboardX.proto.event_pb2 import Event
  out = {}
  for name in sorted(os.listdir(logdir)):
    for raw in tf.data.TFRecordDataset(os.path.join(logdir, name)).as_numpy_iterator():
      event = Event.FromString(raw)
      for v in event.summary.value:
        out.setdefault(v.tag, []).append((event.step, v.simple_value))
  return out


@pytest.mark.slow
def test_steps_compiled_ahead_from_the_config_run_the_pipelines_batches(data_dir):
  """``Trainer.compile`` (what launch/train.py runs while the data is written) builds its
  programs from the config's clip shapes alone; ``init`` and the input pipeline's training and
  evaluation batches then run through those programs, with the results of ``jax.jit``'s; a
  batch of another shape goes through ``jax.jit``."""
  from configs.common import clip_shapes
  from deform3d.train import sharding as shd
  config = micro_config(data_dir)
  mesh = shd.make_mesh()
  ahead = trainer.Trainer(config, mesh, clip_shapes(config))
  ahead.compile()
  batch = shd.global_batch(next(loaders.train_iter(config)), mesh)
  plain = trainer.Trainer(config, mesh, trainer.input_shapes(batch))
  state = plain.init(jax.random.key(0))
  params = jax.tree.map(np.asarray, state.params)
  (got, m1), (want, m2) = (t.run_train_step(t.run_init(jax.random.key(0)), batch)
                           for t in (ahead, plain))
  assert ahead.compiled_calls == {"init": 1, "train": 1} and not plain.compiled_calls
  assert float(m1["loss"]) == float(m2["loss"])
  jax.tree.map(np.testing.assert_array_equal, got.params, want.params)
  # The all-masked batch of a process without evaluation data has the pipeline's layout.
  real = shd.global_batch(next(loaders.eval_iter(config)), mesh)
  assert trainer._layout(ahead._empty_eval_batch(8, 2)) == trainer._layout(real)
  ev = ahead.evaluate(params, loaders.eval_iter(config))
  assert ahead.compiled_calls["eval"] == 3  # 20 videos in batches of 8
  np.testing.assert_array_equal(ev["logits"], plain.evaluate(params, loaders.eval_iter(config))[
      "logits"])
  half = jax.tree.map(lambda x: x[:4], batch)  # another batch size: through jax.jit
  ahead.run_train_step(ahead.run_init(jax.random.key(0)), half)
  assert ahead.compiled_calls["train"] == 1 and ahead.compiled_calls["init"] == 2


@pytest.mark.slow
def test_device_resize_runs_the_pipelines_padded_crops_through_the_compiled_steps(data_dir):
  """``dataset.resize="device"`` end to end on the micro config: the model's clip shapes are the
  same three ways (config, element spec, batch); the steps compiled ahead from the config take
  the pipeline's batches of padded crops (training, evaluation, the all-masked batch); and the
  frames the step makes of them (``Trainer._frames``) are the host pipeline's float32 frames."""
  from configs.common import clip_shapes
  from deform3d.train import sharding as shd
  config = micro_config(data_dir)
  config.dataset.resize, config.dataset.crop_pad = "device", 16  # the records' short side
  want = clip_shapes(config)
  assert loaders.input_shapes(config) == want
  batch = next(loaders.train_iter(config))
  assert batch["frames"].shape[2:4] == (16, 16) and batch["crop"].dtype == np.int32
  assert trainer.input_shapes(batch, config.image_size) == want
  with pytest.raises(ValueError, match="pass the config's image_size"):
    trainer.input_shapes(batch)
  mesh = shd.make_mesh()
  ahead = trainer.Trainer(config, mesh, want)
  ahead.compile()
  state, metrics = ahead.run_train_step(ahead.run_init(jax.random.key(0)),
                                        shd.global_batch(batch, mesh))
  assert ahead.compiled_calls == {"init": 1, "train": 1} and np.isfinite(float(metrics["loss"]))
  real = shd.global_batch(next(loaders.eval_iter(config)), mesh)
  assert trainer._layout(ahead._empty_eval_batch(8, 2)) == trainer._layout(real)
  ev = ahead.evaluate(jax.tree.map(np.asarray, state.params), loaders.eval_iter(config))
  assert ahead.compiled_calls["eval"] == 3 and ev["num_examples"] == 20
  host = micro_config(data_dir)
  host.dataset.frames_dtype = "float32"  # normalized float frames from the host
  for make in (loaders.train_iter, loaders.eval_iter):
    got = np.asarray(jax.jit(ahead._frames)(shd.global_batch(next(make(config)), mesh)))
    np.testing.assert_allclose(got, next(make(host))["frames"], atol=1e-4)


@pytest.mark.heavy
def test_train_command_writes_eval_test_and_tensorboard_and_eval_command_agrees(data_dir,
                                                                                tmp_path):
  """README's commands on the micro config: ``launch/train.py`` ends with the test split's
  ``eval_test/metrics.json`` and ``confusion.png`` and writes TensorBoard scalars to
  ``WORKDIR/tb``; ``launch/eval.py`` on the same checkpoint and split writes the same metrics."""
  work = str(tmp_path / "w")
  common = ["--config", os.path.join(ROOT, "configs", "embedded.py") + ":variant=micro",
            f"--config.dataset.data_dir={data_dir}"]
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "train.py"), *common,
                         "--workdir", work, "--config.tensorboard=true"],
                        capture_output=True, text=True, timeout=600, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(work, "eval_test", "metrics.json")) as fh:
    at_end = json.load(fh)
  assert at_end["num_examples"] == 20 and np.sum(at_end["confusion_matrix"]) == 20
  with open(os.path.join(work, "eval_test", "confusion.png"), "rb") as fh:
    assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
  assert f"test: top1 {at_end['top1']:.4f}" in proc.stdout
  scalars = _tb_scalars(os.path.join(work, "tb"))
  assert [s for s, _ in scalars["train/loss"]] == list(range(2, 13, 2))
  logged = [float(l.split("| loss ")[1].split(" ")[0]) for l in proc.stdout.splitlines()
            if l.startswith("step ")]
  np.testing.assert_allclose([v for _, v in scalars["train/loss"]], logged, atol=1e-4)
  assert [s for s, _ in scalars["eval/top1"]] == [12]
  # The share of each log window spent waiting for input, as logged.
  waits = [float(l.split("| input wait ")[1].rstrip("%")) / 100 for l in proc.stdout.splitlines()
           if l.startswith("step ")]
  assert [s for s, _ in scalars["train/input_wait_share"]] == list(range(2, 13, 2))
  np.testing.assert_allclose([v for _, v in scalars["train/input_wait_share"]], waits, atol=0.006)
  # launch/eval.py: the latest checkpoint (step 12) on the test split gives the same numbers.
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "eval.py"), *common,
                         "--workdir", work, "--split", "test", "--out", str(tmp_path / "ev")],
                        capture_output=True, text=True, timeout=600, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "step 12 test:" in proc.stdout
  with open(tmp_path / "ev" / "metrics.json") as fh:
    again = json.load(fh)
  for k in ("top1", "top5", "mean_class_accuracy", "num_examples"):
    assert again[k] == pytest.approx(at_end[k], abs=1e-6), k
  assert again["confusion_matrix"] == at_end["confusion_matrix"]


def test_curves_parse_keeps_the_last_value_of_a_repeated_step(tmp_path):
  """A run preempted after logging step 6 but before saving it logs step 6 again on resume:
  the curve holds each step once, with the later value."""
  from deform3d.train import curves
  log = tmp_path / "log.txt"
  log.write_text("devices: 1\n"
                 "step 2/8 | loss 2.5000 | acc 0.1\nstep 4/8 | loss 2.0000 | acc 0.2\n"
                 "eval at step 4: top1 0.2500 | top5 1.0\nstep 6/8 | loss 9.0000 | acc 0.3\n"
                 "resumed from checkpoint at step 4 in w\n"
                 "step 6/8 | loss 1.5000 | acc 0.3\nstep 8/8 | loss 1.2500 | acc 0.4\n"
                 "eval at step 8: top1 0.7500 | top5 1.0\n")
  loss, top1 = curves.parse(str(tmp_path))
  assert loss == [(2, 2.5), (4, 2.0), (6, 1.5), (8, 1.25)]
  assert top1 == [(4, 0.25), (8, 0.75)]
  assert curves.plot({"a": str(log)}, str(tmp_path / "c.png")) == str(tmp_path / "c.png")
  with pytest.raises(ValueError, match="no 'step S/N"):
    (tmp_path / "empty.txt").write_text("devices: 1\n")
    curves.parse(str(tmp_path / "empty.txt"))


def test_summarize_runs_gives_median_min_max_and_lowest_class(tmp_path):
  """``launch/summarize_runs.py``: three runs' reports -> top-1 and lowest-class accuracy as
  median (min-max), computed here by hand from the confusion matrices."""
  classes = ["a", "b", "c"]
  matrices = {0: [[4, 0, 0], [0, 4, 0], [0, 0, 4]],   # 1.000, lowest 1.0
              1: [[4, 0, 0], [0, 0, 4], [0, 0, 4]],   # 8/12, lowest b 0.0
              2: [[3, 1, 0], [0, 4, 0], [0, 0, 4]]}   # 11/12, lowest a 0.75
  dirs = []
  for seed, cm in matrices.items():
    w = tmp_path / f"s{seed}"
    cm = np.asarray(cm)
    report.write({"top1": np.trace(cm) / cm.sum(), "top5": 1.0, "mean_class_accuracy": 0.0,
                  "num_examples": int(cm.sum()), "confusion_matrix": cm}, classes,
                 str(w / "eval_test"))
    (w / "config.json").write_text(json.dumps({"seed": seed}))
    (w / "log.txt").write_text(f"step 10/10 | loss 1.0\neval at step 10: top1 0.{seed}\n")
    dirs.append(str(w))
  out = tmp_path / "summary.json"
  proc = subprocess.run([sys.executable, os.path.join(ROOT, "launch", "summarize_runs.py"),
                         *dirs, "--json", str(out)], capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert "test top-1 0.917 (0.667-1.000) | lowest class 0.750 (0.000-1.000) | 3 runs" in proc.stdout
  s = json.loads(out.read_text())
  assert [(r["seed"], r["lowest_class"]) for r in s["runs"]][1:] == [(1, "b"), (2, "a")]
  assert s["runs"][2]["val_top1"] == {"10": 0.2}
  with pytest.raises(FileNotFoundError, match="no evaluation of split 'val'"):
    report.summarize(dirs, "val")


def test_per_class_recall_leaves_absent_classes_out():
  """Rows are true classes; a class with no examples is NaN, not 0 (so it is neither the
  lowest class of a run nor part of the mean class accuracy)."""
  from deform3d.train.metrics import per_class_recall
  got = per_class_recall(np.array([[3, 1, 0], [0, 0, 0], [1, 0, 1]]))
  np.testing.assert_allclose(got, [0.75, np.nan, 0.5])
