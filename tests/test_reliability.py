"""Preemption (SIGKILL) with exact resume, NaN stop, full disk on save, and bad input data."""
import errno
import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from data_pipelines import input_pipeline, loaders, records  # noqa: E402
from deform3d.train import trainer  # noqa: E402
from tests import micro_config  # noqa: E402
from tests.test_data import static_sample  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 12  # the micro variant's total_steps: the compiled step of the other tests of the variant
# configs/embedded.py's micro variant (the trainer's mechanics, not accuracy, are under test),
# made to log and checkpoint every step.
MICRO = ["--config.log_every=1", "--config.eval_every=0",
         "--config.checkpoint_every=1", "--config.keep_checkpoints=2", "--eval_test=false"]



def split_summary(directory, split):
  """The ``{split}.json`` that ``records.write_split`` writes (counts, skipped samples)."""
  with open(os.path.join(directory, f"{split}.json")) as fh:
    return json.load(fh)

@pytest.fixture(scope="module")
def data_dir(micro_data):
  return micro_data


def train_cmd(data, workdir):
  return [sys.executable, os.path.join(ROOT, "launch", "train.py"),
          f"--config={os.path.join(ROOT, 'configs', 'embedded.py')}:variant=micro",
          f"--workdir={workdir}",
          f"--config.dataset.data_dir={data}", *MICRO]


def logged_step(workdir):
  try:
    lines = open(os.path.join(workdir, "log.txt")).read().splitlines()
  except FileNotFoundError:
    return 0
  steps = [int(l.split()[1].split("/")[0]) for l in lines if l.startswith("step ")]
  return max(steps, default=0)


def final_params(workdir):
  import orbax.checkpoint as ocp
  state = ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", str(STEPS),
                                                          "state"))
  import jax
  return jax.tree.leaves(state["params"]), jax.tree.leaves(state["opt_state"])


@pytest.mark.heavy
def test_sigkill_at_random_steps_then_resume_is_bit_identical(data_dir, tmp_path, rng):
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  ref = subprocess.run(train_cmd(data_dir, tmp_path / "ref"), capture_output=True, text=True,
                       timeout=400, env=env, cwd=ROOT)
  assert ref.returncode == 0, ref.stderr[-3000:]
  work = tmp_path / "killed"
  kills = sorted(rng.choice(np.arange(1, STEPS - 1), 2, replace=False))
  notes = []
  for target in kills:  # two preemptions at random steps of the same run
    proc = subprocess.Popen(train_cmd(data_dir, work), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env, cwd=ROOT)
    try:
      deadline = time.time() + 300
      while logged_step(work) < target and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
      assert proc.poll() is None, "run ended before it could be killed"
      os.kill(proc.pid, signal.SIGKILL)  # checkpoint_every=1: often lands inside a save
      proc.wait()
    finally:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
    ckpt = work / "checkpoints"
    notes.append((target, sorted(os.listdir(ckpt)) if ckpt.exists() else []))
  done = subprocess.run(train_cmd(data_dir, work), capture_output=True, text=True, timeout=400,
                        env=env, cwd=ROOT)
  assert done.returncode == 0, (notes, done.stderr[-3000:])
  assert "resumed from checkpoint" in done.stdout
  (p_ref, o_ref), (p_got, o_got) = final_params(tmp_path / "ref"), final_params(work)
  assert len(p_ref) == len(p_got) > 10
  for a, b in zip(p_ref + o_ref, p_got + o_got):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(notes))


def test_training_stream_resumes_exactly_from_a_step(data_dir):
  config = micro_config(data_dir)
  config.dataset.cache = False  # the file / shuffle-buffer path (cache=True: tested above)
  config.dataset.shuffle_buffer = 16
  full = loaders.train_iter(config, 0)
  batches = [next(full) for _ in range(9)]  # past one epoch (40 clips / 8)
  later = loaders.train_iter(config, 6)
  for want in batches[6:]:
    got = next(later)
    np.testing.assert_array_equal(got["frames"], want["frames"])
    np.testing.assert_array_equal(got["label"], want["label"])
  ids = [b"".join(sorted(b["id"])) for b in batches]
  assert len(set(ids)) == len(ids)  # batches differ (not one batch repeated)


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_last_good_checkpoint(data_dir, tmp_path):
  config = micro_config(data_dir)
  config.checkpoint_every = 2
  config.log_every = 5
  clean = loaders.train_iter(config, 0)

  def poisoned(start):
    for step in range(start + 1, 10**6):
      b = next(clean)
      if step >= 5:
        b["keypoints"] = np.full_like(b["keypoints"], np.nan)  # (frames are uint8: no nan)
      yield b

  with pytest.raises(FloatingPointError, match=r"nan at step 5 .*last good checkpoint kept at step 4"):
    trainer.train(config, str(tmp_path), make_train_iter=poisoned, log=lambda s: None)
  assert sorted(int(p) for p in os.listdir(tmp_path / "checkpoints") if p.isdigit()) == [2, 4]


@pytest.mark.slow
def test_full_disk_on_save_names_step_and_keeps_earlier_checkpoint(data_dir, tmp_path,
                                                                   monkeypatch):
  config = micro_config(data_dir)  # runs to step 8 (stop_after), checkpoints every 4
  real = trainer.ocp.CheckpointManager.save

  def save(self, step, *a, **k):
    if step >= 8:
      raise OSError(errno.ENOSPC, "No space left on device")
    return real(self, step, *a, **k)

  monkeypatch.setattr(trainer.ocp.CheckpointManager, "save", save)
  with pytest.raises(trainer.CheckpointWriteError,
                     match=r"checkpoint of step 8 .*No space left on device.*step 4\) is intact"):
    trainer.train(config, str(tmp_path), make_train_iter=lambda s: loaders.train_iter(config, s),
                  stop_after=8, log=lambda s: None)
  monkeypatch.undo()
  mngr = trainer.checkpoint_manager(str(tmp_path), config)
  assert mngr.latest_step() == 4
  tr = trainer.Trainer(config, trainer.shd.make_mesh(), loaders.input_shapes(config))
  state = trainer.restore_step(tr, mngr, config, 4)
  assert int(state.step) == 4


# ------------------------------------------------------------------ bad input data

def write(tmp_path, samples, num_joints=17):
  d = str(tmp_path)
  records.write_split(d, "train", samples, num_shards=2, num_classes=10, num_joints=num_joints)
  return d


def read_all(d, num_joints=17, num_frames=4, num_classes=10):
  ds = input_pipeline.make_dataset(d, "train", num_frames=num_frames, image_size=16,
                                   num_joints=num_joints, batch_size=2, train=False,
                                   num_classes=num_classes)
  return list(input_pipeline.iterate(ds, 2, source=(d, "train")))


def test_truncated_shard_error_names_the_file(rng, tmp_path):
  d = write(tmp_path, [static_sample(rng, i % 10, sid=f"s{i}") for i in range(6)])
  shard = sorted(glob.glob(os.path.join(d, "train-*.tfrecord")))[1]
  data = open(shard, "rb").read()
  open(shard, "wb").write(data[: len(data) // 2])
  with pytest.raises(input_pipeline.DataError, match=r"damaged TFRecord shard.*train-00001-of-00002"):
    read_all(d)


def test_corrupt_jpeg_error_names_split(rng, tmp_path):
  d = write(tmp_path, [static_sample(rng, 1, sid="a")])
  shard = sorted(glob.glob(os.path.join(d, "train-*.tfrecord")))[0]
  ex = tf.train.Example.FromString(next(iter(tf.data.TFRecordDataset(shard))).numpy())
  frames = ex.features.feature["video/frames"].bytes_list.value
  frames[0] = frames[0][:200]  # cut JPEG
  with tf.io.TFRecordWriter(shard) as w:
    w.write(ex.SerializeToString())
  with pytest.raises(input_pipeline.DataError, match=r"split 'train': bad example: .*(JPEG|jpeg)"):
    read_all(d, num_frames=6)


def rewrite_first(d, edit):
  shard = sorted(glob.glob(os.path.join(d, "train-*.tfrecord")))[0]
  ex = tf.train.Example.FromString(next(iter(tf.data.TFRecordDataset(shard))).numpy())
  edit(ex.features.feature)
  with tf.io.TFRecordWriter(shard) as w:
    w.write(ex.SerializeToString())


def test_nan_keypoints_rejected_at_write_and_at_read(rng, tmp_path):
  s = static_sample(rng, 1, sid="nanclip")
  s.keypoints[2, 3, 0] = np.nan
  d = write(tmp_path, [s, static_sample(rng, 2, sid="ok")])
  skipped = split_summary(d, "train")["skipped"]
  assert skipped == [{"id": "nanclip", "reason": "nanclip: keypoints contain NaN or inf"}]
  rewrite_first(d, lambda f: f["pose/keypoints"].float_list.value.__setitem__(5, float("nan")))
  with pytest.raises(input_pipeline.DataError, match="pose/keypoints contains NaN"):
    read_all(d)


def test_wrong_joint_count_and_label_outside_class_list(rng, tmp_path):
  d = write(tmp_path / "a", [static_sample(rng, 1, sid="a")])
  with pytest.raises(input_pipeline.DataError, match="pose/num_joints does not match.*13"):
    read_all(d, num_joints=13)
  rewrite_first(d, lambda f: f["label"].int64_list.value.__setitem__(0, 12))
  with pytest.raises(input_pipeline.DataError, match=r"label outside the class list \[0, 10\)"):
    read_all(d)
  bad = static_sample(rng, 11, sid="big_label")
  d2 = write(tmp_path / "b", [bad, static_sample(rng, 1, sid="ok")])
  assert split_summary(d2, "train")["skipped"][0]["id"] == "big_label"


def test_clip_shorter_than_num_frames_repeats_frames(rng, tmp_path):
  s = static_sample(rng, 3, n_frames=3, sid="short")
  s.keypoints += np.arange(3, dtype=np.float32)[:, None, None]  # tell the frames apart
  d = write(tmp_path, [s])
  (batch,) = read_all(d, num_frames=8)
  kp = batch["keypoints"][0, 0]  # (T, J, 3), clip 0
  assert kp.shape[0] == 8
  # Uniform sampling over 3 frames for 8 slots: indices floor((i + 0.5) * 3 / 8).
  want = np.floor((np.arange(8) + 0.5) * 3 / 8).astype(int)
  firsts = kp[:, 0, 0]
  uniq = sorted(set(np.round(firsts, 5)))
  assert len(uniq) == 3
  np.testing.assert_array_equal([uniq.index(v) for v in np.round(firsts, 5)], want)
