"""Records writer, embedded generator and the tf.data input pipeline."""
import json
import os

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from data_pipelines import embedded, input_pipeline, records  # noqa: E402
from data_pipelines.skeletons import COCO17, flip_permutation  # noqa: E402
from deform3d.pixels import normalize_frames  # noqa: E402

J = len(COCO17)
PERM = flip_permutation(COCO17)


def static_sample(rng, label, n_frames=6, size=24, sid="s"):
  """A clip whose frames and keypoints are the same in every frame (sampling-invariant)."""
  yy, xx = np.mgrid[0:size, 0:size] / size
  # Smooth random colour gradients (survive JPEG well) with a left/right asymmetry.
  frame = (rng.uniform(40, 120, 3) + rng.uniform(-60, 60, 3) * xx[..., None]
           + rng.uniform(-60, 60, 3) * yy[..., None] + 60 * (xx[..., None] ** 2))
  frame = np.clip(frame, 0, 255).astype(np.uint8)
  kp = rng.uniform(2, size - 3, (J, 2)).astype(np.float32)
  scores = rng.uniform(0.5, 1, (J,)).astype(np.float32)
  scores[3] = 0.0
  return records.Sample(np.repeat(frame[None], n_frames, 0), np.repeat(kp[None], n_frames, 0),
                        np.repeat(scores[None], n_frames, 0), label, sid)


def test_flip_permutation_swaps_left_right():
  names = [COCO17[i] for i in PERM]
  assert names[COCO17.index("left_wrist")] == "right_wrist"
  assert names[COCO17.index("right_ankle")] == "left_ankle"
  assert names[COCO17.index("nose")] == "nose"
  np.testing.assert_array_equal(PERM[PERM], np.arange(J))  # an involution
  with pytest.raises(ValueError, match="no twin"):
    flip_permutation(["left_hand", "nose"])


def test_records_round_trip(tmp_path, rng):
  samples = [static_sample(rng, i % 3, sid=f"clip{i}") for i in range(5)]
  summary = records.write_split(str(tmp_path), "train", iter(samples), num_shards=2,
                                num_classes=3, num_joints=J)
  assert summary["num_examples"] == 5 and summary["skipped"] == []
  files = input_pipeline.split_files(str(tmp_path), "train")
  assert [os.path.basename(f) for f in files] == ["train-00000-of-00002.tfrecord",
                                                  "train-00001-of-00002.tfrecord"]
  assert not any(f.endswith(".tmp") for f in os.listdir(tmp_path))
  got = {}
  for raw in tf.data.TFRecordDataset(files):
    ex = tf.train.Example.FromString(raw.numpy()).features.feature
    got[ex["id"].bytes_list.value[0].decode()] = ex
  assert sorted(got) == sorted(s.id for s in samples)
  for s in samples:
    ex = got[s.id]
    assert ex["label"].int64_list.value[0] == s.label
    np.testing.assert_array_equal(np.array(ex["pose/keypoints"].float_list.value).reshape(-1, J, 2),
                                  s.keypoints)
    np.testing.assert_array_equal(np.array(ex["pose/scores"].float_list.value).reshape(-1, J),
                                  s.scores)
    jpegs = ex["video/frames"].bytes_list.value
    assert len(jpegs) == s.frames.shape[0]
    decoded = tf.io.decode_jpeg(jpegs[0]).numpy().astype(float)
    assert np.abs(decoded - s.frames[0]).mean() < 2.0  # JPEG is lossy, but close


def test_invalid_samples_are_skipped_and_listed(tmp_path, rng):
  good = static_sample(rng, 1, sid="good")
  bad_label = static_sample(rng, 7, sid="bad_label")
  bad_joints = static_sample(rng, 0, sid="bad_joints")
  bad_joints.keypoints = bad_joints.keypoints[:, :13]
  nan = static_sample(rng, 0, sid="nan")
  nan.keypoints[2, 4, 0] = np.nan
  summary = records.write_split(str(tmp_path), "val", iter([good, bad_label, bad_joints, nan]),
                                num_shards=1, num_classes=3, num_joints=J)
  assert summary["num_examples"] == 1
  reasons = {s["id"]: s["reason"] for s in summary["skipped"]}
  assert "outside the class list" in reasons["bad_label"]
  assert "keypoints must be (M, F, J, 2) = (M >= 1, 6, 17, 2), got (6, 13, 2)" in \
      reasons["bad_joints"]
  assert "NaN" in reasons["nan"]
  with open(tmp_path / "val.json") as fh:
    assert json.load(fh)["skipped"] == summary["skipped"]


def test_frame_indices_uniform_sampling():
  def idx(n, t, offsets):
    return input_pipeline.frame_indices(n, t, tf.constant(offsets, tf.float32)).numpy()
  np.testing.assert_array_equal(idx(32, 8, [[0.5] * 8]), [[2, 6, 10, 14, 18, 22, 26, 30]])
  np.testing.assert_array_equal(idx(32, 8, [[0.0] * 8]), [[0, 4, 8, 12, 16, 20, 24, 28]])
  short = idx(3, 8, [[0.5] * 8])
  assert short.min() >= 0 and short.max() <= 2 and np.all(np.diff(short) >= 0)
  rand = idx(40, 8, np.random.default_rng(0).uniform(0, 1, (1, 8)))
  assert np.all(rand // 5 == np.arange(8))  # one frame from each segment of 5


@pytest.fixture(scope="module")
def static_dir(tmp_path_factory):
  rng = np.random.default_rng(1)
  d = tmp_path_factory.mktemp("static")
  records.write_split(str(d), "train", (static_sample(rng, i % 3, sid=f"c{i}") for i in range(24)),
                      num_shards=3, num_classes=3, num_joints=J)
  return str(d)


def _batches(data_dir, train, seed=0, n=24, **kw):
  ds = input_pipeline.make_dataset(data_dir, "train", num_frames=4, image_size=24,
                                   num_joints=J, batch_size=n, train=train, seed=seed,
                                   flip_perm=PERM, crop_scale=(1.0, 1.0), **kw)
  return next(input_pipeline.iterate(ds))


def test_pipeline_shapes_and_keypoint_normalization(static_dir):
  b = _batches(static_dir, train=False, num_clips=2)
  assert b["frames"].shape == (24, 2, 4, 24, 24, 3) and b["frames"].dtype == np.float32
  assert b["keypoints"].shape == (24, 2, 4, J, 3)
  # Source keypoints in pixels of a 24x24 frame: x_norm = (2x + 1) / 24 - 1; missing joint -> 0.
  rng = np.random.default_rng(1)
  src = {f"c{i}": static_sample(rng, i % 3, sid=f"c{i}") for i in range(24)}
  for i, sid in enumerate(b["id"]):
    s = src[sid.decode()]
    want = (2 * s.keypoints[0] + 1) / 24 - 1
    want[s.scores[0] == 0] = 0
    np.testing.assert_allclose(b["keypoints"][i, 0, 0, :, :2], want, atol=1e-5)
    np.testing.assert_allclose(b["keypoints"][i, 0, 0, :, 2], s.scores[0], atol=1e-6)
    assert b["label"][i] == s.label


def test_flip_mirrors_frames_negates_x_and_swaps_joints(static_dir):
  ev = _batches(static_dir, train=False, num_clips=1)
  tr = _batches(static_dir, train=True)
  ref = {sid: i for i, sid in enumerate(ev["id"])}
  flipped = 0
  for i, sid in enumerate(tr["id"]):
    e = ref[sid]
    kp_e, kp_t = ev["keypoints"][e, 0, 0], tr["keypoints"][i, 0]
    fr_e, fr_t = ev["frames"][e, 0, 0], tr["frames"][i, 0]
    if np.allclose(kp_t, kp_e, atol=1e-5):
      np.testing.assert_allclose(fr_t, fr_e, atol=1e-4)
    else:
      flipped += 1
      np.testing.assert_allclose(kp_t[PERM, 0], -kp_e[:, 0], atol=1e-5)
      np.testing.assert_allclose(kp_t[PERM, 1], kp_e[:, 1], atol=1e-5)
      np.testing.assert_allclose(kp_t[PERM, 2], kp_e[:, 2], atol=1e-6)
      np.testing.assert_allclose(fr_t, fr_e[:, ::-1], atol=1e-4)
  assert 0 < flipped < 24


def persons_sample(rng, label, persons, sid):
  """``static_sample`` with ``persons`` persons: person ``m`` is person 0 shifted by ``m``
  pixels, with its own missing joint ``3 + m``."""
  s = static_sample(rng, label, sid=sid)
  kp = np.stack([s.keypoints + m for m in range(persons)])
  sc = np.stack([s.scores] * persons)
  for m in range(persons):
    sc[m, :, 3 + m] = 0.0
  return records.Sample(s.frames, kp, sc, label, sid)


def test_persons_padded_truncated_flipped_per_person_and_v1_records(tmp_path, rng):
  """Records of 1, 2 and 3 persons and a schema-v1 record (no pose/num_persons, one person):
  ``max_persons=2`` gives ``(P=2, T, J, 3)`` (the first two persons; absent ones all 0),
  ``max_persons=1`` the first person as ``(T, J, 3)``; a training flip mirrors every person."""
  samples = [persons_sample(rng, 0, p, f"p{p}") for p in (1, 2, 3)]
  d = str(tmp_path)
  records.write_split(d, "train", iter(samples), num_shards=1, num_classes=3, num_joints=J)
  v1 = persons_sample(rng, 1, 1, "v1")
  ex = tf.train.Example.FromString(records.to_example(v1))
  del ex.features.feature["pose/num_persons"]                  # as schema version 1 wrote it
  with tf.io.TFRecordWriter(os.path.join(d, "train-00000-of-00001.tfrecord.v1")) as w:
    w.write(ex.SerializeToString())
  files = input_pipeline.split_files(d, "train")
  with tf.io.TFRecordWriter(files[0] + ".both") as w:
    for f in (files[0], files[0] + ".v1"):
      for r in tf.data.TFRecordDataset(f):
        w.write(r.numpy())
  os.replace(files[0] + ".both", files[0])
  os.remove(files[0] + ".v1")
  src = {s.id: s for s in samples + [v1]}

  def norm(s, m):
    want = (2 * s.keypoints[m, 0] + 1) / 24 - 1
    want[s.scores[m, 0] == 0] = 0
    return np.concatenate([want, s.scores[m, 0][:, None]], axis=-1)

  two = _batches(d, train=False, n=4, max_persons=2)
  one = _batches(d, train=False, n=4, max_persons=1)
  assert two["keypoints"].shape == (4, 1, 2, 4, J, 3) and one["keypoints"].shape == (4, 1, 4, J, 3)
  for i, sid in enumerate(two["id"]):
    s = src[sid.decode()]
    for m in range(2):
      got = two["keypoints"][i, 0, m, 0]
      if m < len(s.keypoints):
        np.testing.assert_allclose(got, norm(s, m), atol=1e-5)
      else:
        assert np.all(got == 0), sid                           # padding: an absent person
    np.testing.assert_allclose(one["keypoints"][i, 0, 0], norm(s, 0), atol=1e-5)
  tr = _batches(d, train=True, n=4, max_persons=2, seed=5)
  ev = {sid: i for i, sid in enumerate(two["id"])}
  flipped = 0
  for i, sid in enumerate(tr["id"]):
    kp_t, kp_e = tr["keypoints"][i, :, 0], two["keypoints"][ev[sid], 0, :, 0]  # (P, J, 3)
    if not np.allclose(kp_t, kp_e, atol=1e-5):
      flipped += 1
      np.testing.assert_allclose(kp_t[:, PERM, 0], -kp_e[:, :, 0], atol=1e-5)
      np.testing.assert_allclose(kp_t[:, PERM, 1:], kp_e[:, :, 1:], atol=1e-5)
  assert flipped > 0
  with pytest.raises(ValueError, match="max_persons must be >= 1"):
    _batches(d, train=False, n=4, max_persons=0)


def test_pipeline_is_deterministic_per_seed(static_dir):
  a = _batches(static_dir, train=True, seed=3)
  b = _batches(static_dir, train=True, seed=3)
  c = _batches(static_dir, train=True, seed=4)
  np.testing.assert_array_equal(a["frames"], b["frames"])
  np.testing.assert_array_equal(a["id"], b["id"])
  assert not np.array_equal(a["id"], c["id"])


def test_process_sharding_splits_eval_data(static_dir):
  ids = []
  for p in range(2):
    ds = input_pipeline.make_dataset(static_dir, "train", num_frames=4, image_size=24,
                                     num_joints=J, batch_size=5, train=False, process_index=p,
                                     process_count=2)
    batches = list(input_pipeline.iterate(ds, 5))
    assert all(b["frames"].shape[0] == 5 for b in batches)
    ids += [i for b in batches for i, m in zip(b["id"], b["mask"]) if m]
  assert sorted(ids) == sorted(f"c{i}".encode() for i in range(24))


def test_missing_split_names_directory(tmp_path):
  with pytest.raises(FileNotFoundError, match="no TFRecord shards for split 'test'"):
    input_pipeline.split_files(str(tmp_path), "test")


def test_embedded_generator_is_deterministic_and_labelled():
  a = list(embedded.samples("val", 20, seed=5, num_frames=8, size=32))
  b = list(embedded.samples("val", 20, seed=5, num_frames=8, size=32))
  assert [s.label for s in a] == [s.label for s in b]
  np.testing.assert_array_equal(a[3].frames, b[3].frames)
  assert sorted({s.label for s in a}) == list(range(len(embedded.CLASSES)))
  for s in a:
    persons = 2 if embedded.CLASSES[s.label] in embedded.PARTNER else 1
    assert s.frames.shape == (8, 32, 32, 3) and s.keypoints.shape == (persons, 8, J, 2)
    present = s.scores > 0
    assert present.mean() > 0.8
    assert np.all((s.keypoints[present] > -8) & (s.keypoints[present] < 40))


def test_interaction_classes_differ_only_in_the_second_person():
  """Same seed, greeting_returned vs greeting_ignored: the first person's keypoints are identical
  (a one-person model cannot tell them apart); the second raises its right wrist above its
  shoulder (waving back) only in greeting_returned."""
  ret, ign = (embedded.CLASSES.index(c) for c in ("greeting_returned", "greeting_ignored"))
  w, sh = COCO17.index("right_wrist"), COCO17.index("right_shoulder")
  for seed in range(5):
    _, ka, sa = embedded.render_clip(ret, np.random.default_rng(seed))
    _, kb, sb = embedded.render_clip(ign, np.random.default_rng(seed))
    assert ka.shape == kb.shape == (2, 32, J, 2)
    np.testing.assert_array_equal(ka[0], kb[0])
    np.testing.assert_array_equal(sa[0], sb[0])
    seen = (sa[1, :, w] > 0) & (sa[1, :, sh] > 0)
    above = lambda k: np.mean(k[1, seen, w, 1] < k[1, seen, sh, 1])  # image y grows downwards
    assert above(ka) == 1.0 and above(kb) == 0.0, (seed, above(ka), above(kb))


def test_wave_classes_differ_only_in_flag_colour():
  """Same seed, the two wave classes: identical keypoints, frames differ near the right wrist."""
  fa, ka, _ = embedded.render_clip(0, np.random.default_rng(9))
  fb, kb, _ = embedded.render_clip(1, np.random.default_rng(9))
  np.testing.assert_array_equal(ka, kb)
  diff = np.abs(fa.astype(int) - fb.astype(int)).sum(-1) > 60  # (F, H, W)
  f, y, x = np.nonzero(diff)
  assert len(f) > 0
  wrist = ka[0][f, 10]  # right wrist keypoint (noisy) of those frames
  assert np.median(np.hypot(x - wrist[:, 0], y - wrist[:, 1])) < 8
  red = fa[diff][:, 0].astype(int) - fa[diff][:, 2]
  blue = fb[diff][:, 2].astype(int) - fb[diff][:, 0]
  assert red.mean() > 80 and blue.mean() > 80


def test_record_counts_come_from_metadata_and_match_the_shards(static_dir, tmp_path):
  """Training with ``cache=False`` sizes its epochs from the split's metadata instead of a pass
  over the data; the metadata must agree with what the shards hold."""
  files = input_pipeline.split_files(static_dir, "train")
  counts = input_pipeline.record_counts(static_dir, "train", files)
  actual = [sum(1 for _ in tf.data.TFRecordDataset(f)) for f in files]
  assert counts == actual and sum(actual) > len(files)
  # A TFDS build: shardLengths of dataset_info.json (int64 fields are JSON strings there).
  tfds_dir = tmp_path / "tfds"
  tfds_dir.mkdir()
  for i, f in enumerate(files):
    (tfds_dir / f"demo-train.tfrecord-{i:05d}-of-{len(files):05d}").write_bytes(
        open(f, "rb").read())
  (tfds_dir / "dataset_info.json").write_text(json.dumps(
      {"name": "demo", "splits": [{"name": "train", "shardLengths": [str(c) for c in actual]}]}))
  tfds_files = input_pipeline.split_files(str(tfds_dir), "train")
  assert input_pipeline.record_counts(str(tfds_dir), "train", tfds_files) == actual
  # No usable metadata: None, and the pipeline counts by reading.
  assert input_pipeline.record_counts(str(tfds_dir), "val", tfds_files) is None
  # Same records, counted from metadata (ours) or by reading (the TFDS copy without its info):
  # the same training stream.
  (tfds_dir / "dataset_info.json").unlink()
  a = _batches(static_dir, True, cache=False, start_position=30)
  b = _batches(str(tfds_dir), True, cache=False, start_position=30)
  np.testing.assert_array_equal(a["id"], b["id"])
  np.testing.assert_array_equal(a["frames"], b["frames"])


def test_embedded_ground_truth_names_the_animated_joints(tmp_path):
  """``truth=True`` draws no random numbers (the clip is the same); the moving joints are those
  the class's action animates: the right wrist for waving, the first person's left arm and
  nothing of the idle partner in greeting_ignored; the flag sits above the right wrist."""
  name = lambda *n: sorted(COCO17.index(x) for x in n)
  expect = {"wave_red_flag": [name("right_wrist")],
            "greeting_ignored": [name("left_elbow", "left_wrist"), []],
            "greeting_returned": [name("left_elbow", "left_wrist"), name("right_wrist")],
            "kick": [name("right_knee", "right_ankle")],
            "punch": [name("left_elbow", "right_elbow", "left_wrist", "right_wrist")]}
  for cls, moving in expect.items():
    label = embedded.CLASSES.index(cls)
    frames, kp, scores = embedded.render_clip(label, np.random.default_rng(4))
    f2, k2, s2, truth = embedded.render_clip(label, np.random.default_rng(4), truth=True)
    np.testing.assert_array_equal(frames, f2)
    np.testing.assert_array_equal(kp, k2)
    assert [np.flatnonzero(m).tolist() for m in truth["moving"]] == moving, cls
    still = truth["motion"][~truth["moving"]]
    assert np.all(still < 1e-6), cls  # not animated: exactly still relative to the hips
    assert np.all(truth["motion"][truth["moving"]] > 2 * embedded.MOVING_THRESHOLD), cls
  _, kp, scores, truth = embedded.render_clip(0, np.random.default_rng(4), truth=True)
  flag = truth["flag"]
  assert flag["colour"] == "red" and flag["cue"]
  seen = scores[0, :, 10] > 0
  dist = np.hypot(*(flag["xy"][seen] - kp[0, seen, 10]).T)
  assert np.all(dist < 0.1 * 56), dist  # 0.08 body heights above the wrist
  # Written with the split, keyed by clip id.
  embedded.build(str(tmp_path), sizes={"val": (12, 1, 7)}, num_frames=8, size=32, verbose=False)
  gt = embedded.read_ground_truth(str(tmp_path), "val")
  assert len(gt) == 12 and all(k.startswith("embedded/val/") for k in gt)
  assert all(v["frame_size"] == [32, 32] for v in gt.values())
  with pytest.raises(FileNotFoundError, match="test-ground_truth.json"):
    embedded.read_ground_truth(str(tmp_path), "test")


def test_to_uint8_inverts_the_frame_normalization(rng):
  pixels = rng.integers(0, 256, (2, 4, 5, 3)).astype(np.uint8)
  frames = (pixels.astype(np.float32) - input_pipeline.MEAN) / input_pipeline.STD
  back = input_pipeline.to_uint8(frames + 1e-3)  # round-off must not drop a level
  np.testing.assert_array_equal(back, pixels)
  assert back.dtype == np.uint8
  extreme = input_pipeline.to_uint8(np.array([[-10.0, 0.0, 10.0]]))
  np.testing.assert_array_equal(extreme, [[0, 116, 255]])


def _ids_in_shards(data_dir, split):
  """Every record id of the split, read from the shards with TensorFlow alone."""
  spec = {"id": tf.io.FixedLenFeature([], tf.string)}
  files = sorted(f for f in os.listdir(data_dir) if f.startswith(split + "-"))
  return [tf.io.parse_single_example(r, spec)["id"].numpy()
          for f in files for r in tf.data.TFRecordDataset(os.path.join(data_dir, f))]


@pytest.mark.parametrize("processes", [2, 3])  # 4 shards: by file (2), by record (3)
def test_process_sharding_covers_every_record_once(tmp_path, rng, processes):
  """Evaluation and one training epoch: the processes' records are disjoint and together every
  record of the split, as read from the shards directly (not by the pipeline)."""
  d = str(tmp_path)
  records.write_split(d, "train", (static_sample(rng, i % 3, n_frames=2, size=16, sid=f"r{i}")
                                   for i in range(22)), num_shards=4, num_classes=3,
                      num_joints=J)
  every = _ids_in_shards(d, "train")
  assert sorted(every) == sorted(f"r{i}".encode() for i in range(22))
  kw = dict(num_frames=2, image_size=16, num_joints=J, batch_size=1, process_count=processes)
  evaluated, trained = [], []
  for p in range(processes):
    ds = input_pipeline.make_dataset(d, "train", train=False, process_index=p, **kw)
    evaluated.append([b["id"][0] for b in input_pipeline.iterate(ds)])
    n = len(evaluated[-1])  # one epoch of this process's training stream
    ds = input_pipeline.make_dataset(d, "train", train=True, process_index=p, **kw)
    trained.append([b["id"][0] for b in input_pipeline.iterate(ds.take(n))])
  for parts in (evaluated, trained):
    flat = [i for part in parts for i in part]
    assert len(flat) == len(set(flat)) == 22  # disjoint
    assert sorted(flat) == sorted(every)      # complete
    assert min(len(p) for p in parts) >= 22 // processes - 3


def test_embedded_ensure_builds_once_and_rebuilds_a_new_version(tmp_path, monkeypatch):
  """``embedded.ensure`` (what launch/train.py calls): builds into a missing directory, leaves a
  built one alone, rebuilds one that holds another version."""
  built = []

  def fake_build(out_dir, *a, meanwhile=None, **kw):  # the real build: the tests above read it
    built.append(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "VERSION"), "w") as fh:
      fh.write(embedded.DATASET_VERSION + "\n")

  monkeypatch.setattr(embedded, "build", fake_build)
  d = str(tmp_path / "embedded")
  embedded.ensure(d)
  assert built == [d]
  embedded.ensure(d)
  assert built == [d]  # already there
  with open(os.path.join(d, "VERSION"), "w") as fh:
    fh.write("1.2.0\n")
  embedded.ensure(d)
  assert built == [d, d]  # another version: rebuilt
  assert embedded.ensure(d, meanwhile=lambda: 7) == 7 and built == [d, d]  # run at once


@pytest.mark.slow
def test_embedded_build_in_two_processes_writes_the_same_bytes(tmp_path, monkeypatch):
  """The parallel build (the first split here, the others in a child process; or, with work
  for this process ``meanwhile``, every split in one child process) writes every file as the
  one-process build does."""
  sizes = {"train": (30, 2, 101), "val": (12, 1, 202), "test": (12, 1, 303)}
  one, two, three = (str(tmp_path / n) for n in ("one", "two", "three"))
  embedded.build(one, sizes, num_frames=8, size=32, verbose=False, parallel=False)
  monkeypatch.setattr(embedded.os, "sched_getaffinity", lambda pid: {0, 1})  # even on 1 core
  embedded.build(two, sizes, num_frames=8, size=32, verbose=False, parallel=True)
  assert embedded.build(three, sizes, num_frames=8, size=32, verbose=False, parallel=True,
                        meanwhile=lambda: "compiled") == "compiled"
  names = sorted(os.listdir(one))
  assert "test-00000-of-00001.tfrecord" in names
  for other in (two, three):
    assert names == sorted(os.listdir(other))
    for name in names:
      with open(os.path.join(one, name), "rb") as a, open(os.path.join(other, name), "rb") as b:
        assert a.read() == b.read(), (other, name)


def test_embedded_build_names_a_failed_child_process(tmp_path, monkeypatch):
  """When the child process writing the later splits fails, the build says which splits and
  where, after the first split is written."""
  monkeypatch.setattr(embedded.os, "sched_getaffinity", lambda pid: {0, 1})
  monkeypatch.setattr("sys.executable", "false")  # a child that exits with 1
  sizes = {"train": (4, 1, 101), "val": (2, 1, 202)}
  with pytest.raises(RuntimeError, match=r"writing splits \['val'\] to .*exit code 1"):
    embedded.build(str(tmp_path), sizes, num_frames=4, size=32, verbose=False)
  assert os.path.exists(tmp_path / "train.json") and not os.path.exists(tmp_path / "VERSION")
  # With work for this process meanwhile, one child writes every split: the work runs, then
  # the failed child is named.
  ran = []
  with pytest.raises(RuntimeError, match=r"writing splits \['train', 'val'\] to .*exit code 1"):
    embedded.build(str(tmp_path / "b"), sizes, num_frames=4, size=32, verbose=False,
                   meanwhile=lambda: ran.append(1))
  assert ran == [1] and not os.path.exists(tmp_path / "b" / "VERSION")


def _marker_sample(index, n_frames=16, h=64, w=96):
  """A non-square clip whose frames differ: frame ``t`` has a grey level of its own
  (``30 + 12 t``) and a green 8x8 marker at its own place, and joint 0 (the nose, its own flip
  twin) sits on the marker's centre; the other joints are absent."""
  frames = np.zeros((n_frames, h, w, 3), np.uint8)
  kp = np.zeros((n_frames, J, 2), np.float32)
  scores = np.zeros((n_frames, J), np.float32)
  for t in range(n_frames):
    frames[t] = 30 + 12 * t
    px = w // 2 - 14 + (t * 7 + 3 * index) % 20   # near the centre, so most crops hold it
    py = h // 2 - 12 + (t * 5 + 2 * index) % 16
    frames[t, py:py + 8, px:px + 8] = (20, 250, 20)
    kp[t, 0] = (px + 3.5, py + 3.5)  # pixel i's centre is at i
    scores[t, 0] = 1.0
  return records.Sample(frames, kp, scores, index % 3, f"m{index}"), kp[:, 0]


def test_random_crops_of_non_square_frames_keep_each_frame_with_its_keypoints(tmp_path):
  """Training crops (random square of 0.5-0.8 x the short side, offsets not 0) of 64x96 frames
  that differ per index: every output frame is one source frame of its temporal segment, its
  marker lies where its own keypoint says, and each clip's keypoints are one affine map of the
  source pixels (a square crop of a size in range, flipped or not)."""
  samples = [_marker_sample(i) for i in range(6)]
  records.write_split(str(tmp_path), "train", (s for s, _ in samples), num_shards=1,
                      num_classes=3, num_joints=J)
  source = {s.id: centres for s, centres in samples}
  size_out, checked, offsets, flips = 32, 0, [], set()
  for seed in range(4):
    ds = input_pipeline.make_dataset(str(tmp_path), "train", num_frames=4, image_size=size_out,
                                     num_joints=J, batch_size=6, train=True, seed=seed,
                                     flip_perm=PERM, crop_scale=(0.5, 0.8), cache=False)
    b = next(input_pipeline.iterate(ds))
    for i, sid in enumerate(b["id"]):
      centres = source[sid.decode()]
      kp = b["keypoints"][i, :, 0]                                    # (T, 3) of joint 0
      src_t = []
      for f in range(4):
        img = b["frames"][i, f] * input_pipeline.STD + input_pipeline.MEAN
        green = img[..., 1] - img[..., 0]
        level = np.median(img[..., 0][green < 60])
        t = int(round((level - 30) / 12))
        assert abs(level - (30 + 12 * t)) < 4, (sid, f, level)
        assert 4 * f <= t <= 4 * f + 3, (sid, f, t)                # its own segment
        src_t.append(t)
        weight = np.clip(green - 60, 0, None)
        inside = weight.sum() > 0 and weight[[0, -1]].sum() == 0 and weight[:, [0, -1]].sum() == 0
        if inside:  # the whole marker in the crop: its centre is where the keypoint says
          yy, xx = np.mgrid[0:size_out, 0:size_out]
          cx, cy = (weight * xx).sum() / weight.sum(), (weight * yy).sum() / weight.sum()
          np.testing.assert_allclose(kp[f, :2], [(2 * cx + 1) / size_out - 1,
                                                 (2 * cy + 1) / size_out - 1], atol=0.08,
                                     err_msg=f"{sid} frame {f}")
          checked += 1
      # The clip's keypoints: x = a_x * px + b_x, y = a_y * py + b_y over its source frames.
      src = centres[src_t]
      fits = [np.polyfit(src[:, d], kp[:, d], 1) for d in (0, 1)]
      for d in (0, 1):
        np.testing.assert_allclose(np.polyval(fits[d], src[:, d]), kp[:, d], atol=1e-4)
      size_x, size_y = 2 / abs(fits[0][0]), 2 / fits[1][0]
      assert abs(size_x - size_y) < 1e-2 and 0.5 * 64 - 1 <= size_x <= 0.8 * 64, (size_x, size_y)
      flip = fits[0][0] < 0
      flips.add(flip)
      ox = (1 - (fits[0][1] * (-1 if flip else 1) + 1) * size_x) / 2
      oy = (1 - (fits[1][1] + 1) * size_y) / 2
      assert -0.01 <= ox <= 96 - size_x + 0.01 and -0.01 <= oy <= 64 - size_y + 0.01, (ox, oy)
      offsets.append((ox, oy))
  assert checked >= 40, checked  # of 96 frames (53 in this data)
  assert flips == {True, False}
  assert max(o[0] for o in offsets) > 5 and max(o[1] for o in offsets) > 5  # offsets not 0


def _source_frames(frames):
  """The source frame ``t`` of each normalized frame ``(..., H, W, 3)`` of a clip made from
  ``_marker_sample``: the grey level ``30 + 12 t`` of its pixels off the marker."""
  img = np.asarray(frames) * input_pipeline.STD + input_pipeline.MEAN
  out = []
  for im in img.reshape((-1,) + img.shape[-3:]):
    level = np.median(im[..., 0][im[..., 1] - im[..., 0] < 60])
    t = int(round((level - 30) / 12))
    assert abs(level - (30 + 12 * t)) < 4, level
    out.append(t)
  return np.array(out).reshape(img.shape[:-3])


def test_evaluation_clips_are_evenly_offset_in_time(tmp_path):
  """Evaluation's ``K`` clips of a video sample each of the ``T`` temporal segments at offset
  ``(k + 0.5) / K``: with 16 frames, ``T = 4`` and ``K = 3``, clip ``k``'s frame ``f`` is source
  frame ``floor(4 (f + (k + 0.5) / 3))`` (4f, 4f + 2, 4f + 3), and its keypoints are that
  frame's (centre crop: 64x64 of the 64x96 frames, 16 px off the left edge)."""
  samples = [_marker_sample(i) for i in range(2)]
  records.write_split(str(tmp_path), "train", (s for s, _ in samples), num_shards=1,
                      num_classes=3, num_joints=J)
  ds = input_pipeline.make_dataset(str(tmp_path), "train", num_frames=4, image_size=16,
                                   num_joints=J, batch_size=2, train=False, num_clips=3,
                                   cache=False)
  b = next(input_pipeline.iterate(ds))
  assert b["frames"].shape == (2, 3, 4, 16, 16, 3)
  want = np.floor(4 * (np.arange(4)[None] + (np.arange(3)[:, None] + 0.5) / 3)).astype(int)
  np.testing.assert_array_equal(want[:, 0], [0, 2, 3])
  centres = {s.id: c for s, c in samples}
  for i, sid in enumerate(b["id"]):
    np.testing.assert_array_equal(_source_frames(b["frames"][i]), want)
    c = centres[sid.decode()][want]                                       # (K, T, 2) pixels
    np.testing.assert_allclose(b["keypoints"][i, :, :, 0, :2],
                               (2 * (c - [16, 0]) + 1) / 64 - 1, atol=1e-5)


def test_training_clips_draw_a_random_frame_of_each_segment(tmp_path):
  """A training clip takes one frame of each of the ``T`` equal temporal segments, at a random
  place in it (temporal jitter): over 4 seeds x 6 clips of 16 frames (``T = 4``), every frame
  comes from its own segment and each segment's frames fall on at least 3 of its 4 frames."""
  samples = [_marker_sample(i) for i in range(6)]
  records.write_split(str(tmp_path), "train", (s for s, _ in samples), num_shards=1,
                      num_classes=3, num_joints=J)
  within = [[] for _ in range(4)]
  for seed in range(4):
    ds = input_pipeline.make_dataset(str(tmp_path), "train", num_frames=4, image_size=16,
                                     num_joints=J, batch_size=6, train=True, seed=seed,
                                     flip_perm=PERM, crop_scale=(1.0, 1.0), cache=False)
    t = _source_frames(next(input_pipeline.iterate(ds))["frames"])          # (6, T)
    for f in range(4):
      assert ((4 * f <= t[:, f]) & (t[:, f] <= 4 * f + 3)).all(), (seed, f, t[:, f])
      within[f] += (t[:, f] - 4 * f).tolist()
  assert all(len(set(w)) >= 3 for w in within), within


@pytest.mark.parametrize("train", [True, False])
def test_uint8_frames_are_the_float_frames_rounded(tmp_path, train):
  """``frames_dtype="uint8"`` (what the configs use): the same clips as the float32 frames,
  per element, up to rounding to the nearest pixel level; keypoints, labels and ids identical;
  ``normalize_frames`` (the model's first step) gives the float32 frames back within half a
  level. Random crops of non-square frames that differ per index, flips, and evaluation clips."""
  samples = [_marker_sample(i) for i in range(5)]
  records.write_split(str(tmp_path), "train", (s for s, _ in samples), num_shards=1,
                      num_classes=3, num_joints=J)
  kw = dict(num_frames=4, image_size=20, num_joints=J, batch_size=5, train=train, seed=3,
            flip_perm=PERM, crop_scale=(0.5, 0.8), cache=False, num_clips=2)
  as_float = next(input_pipeline.iterate(input_pipeline.make_dataset(str(tmp_path), "train",
                                                                     **kw)))
  as_uint8 = next(input_pipeline.iterate(input_pipeline.make_dataset(
      str(tmp_path), "train", frames_dtype="uint8", **kw)))
  assert as_uint8["frames"].dtype == np.uint8 and as_float["frames"].dtype == np.float32
  for key in ("keypoints", "label", "id"):
    np.testing.assert_array_equal(as_uint8[key], as_float[key])
  pixels = as_float["frames"] * input_pipeline.STD + input_pipeline.MEAN
  err = np.abs(as_uint8["frames"].astype(np.float32) - pixels)
  assert err.max() <= 0.5 + 1e-3, err.max()
  assert (err > 0.1).mean() > 0.1  # the resize's values are not whole levels: rounding happened
  normalized = normalize_frames(as_uint8["frames"])
  assert normalized.dtype == np.float32
  assert np.abs(normalized - as_float["frames"]).max() <= (0.5 + 1e-3) / input_pipeline.STD.min()
  np.testing.assert_array_equal(input_pipeline.to_uint8(as_uint8["frames"]), as_uint8["frames"])
  with pytest.raises(ValueError, match="frames_dtype must be one of"):
    input_pipeline.make_dataset(str(tmp_path), "train", frames_dtype="float16", **kw)


def test_input_benchmark_reports_rates_and_stages(tmp_path):
  """The input benchmark (``benchmarks/input_bench.py``) on the embedded data: clips/s per round
  and the per-clip time of each stage prefix, each prefix no cheaper than the one before."""
  from benchmarks import input_bench
  result = input_bench.run(str(tmp_path), datasets=("embedded",), clips=4, rounds=2,
                           log=lambda s: None, frames_dtypes=("uint8", "float32"))
  row = result["embedded"]
  assert row["frames_dtype"] == "uint8" and set(row["by_frames_dtype"]) == {"uint8", "float32"}
  assert len(row["clips_per_s"]) == 2 and row["min"] <= row["median"] <= row["max"]
  assert row["min"] > 0 and row["cores"] >= 1
  for r in row["by_frames_dtype"].values():
    assert len(r["clips_per_s"]) == 2 and 0 < r["min"] <= r["median"] <= r["max"]
    st = r["stages_ms_per_clip"]
    assert 0 < st["parse"] and st["decode_only"] == pytest.approx(st["decode"] - st["parse"])
    assert st["whole"] > st["parse"] and st["to_numpy"] > 0
