"""Raw-format readers and TFDS/Beam builders of the paper's datasets, on files written here in
the exact raw formats (NTU .skeleton + .avi, Penn Action .mat + frames, FineGYM lists + videos,
pyskl pickles). Records read back must equal the source numbers; corrupt inputs are listed as
skipped with a reason naming the file."""
import glob
import json
import os

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
pytest.importorskip("apache_beam")
pytest.importorskip("av")

from tests import fresh_python, raw_fixtures as fx  # noqa: E402
from data_pipelines import records  # noqa: E402
from data_pipelines.datasets import common, finegym, ntu, penn, pyskl  # noqa: E402
from data_pipelines.datasets.common import RawFormatError, read_video  # noqa: E402
from tests.raw_fixtures import write_video  # noqa: E402
from launch.build_dataset import build  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A damaged video: fixed bytes that no demuxer takes (random bytes were probed as an audio-only
# format in about 1 of 300 draws, "no video stream" instead of "unreadable video").
JUNK_VIDEO = b"this is not a video file\n" * 120


def read_records(data_dir, split):
  out = {}
  for f in sorted(glob.glob(os.path.join(data_dir, f"*-{split}.tfrecord-*"))):
    for r in tf.data.TFRecordDataset(f):
      ex = tf.train.Example.FromString(r.numpy()).features.feature
      j = ex["pose/num_joints"].int64_list.value[0]
      m = ex["pose/num_persons"].int64_list.value[0]
      frames = np.stack([tf.io.decode_jpeg(b).numpy() for b in ex["video/frames"].bytes_list.value])
      out[ex["id"].bytes_list.value[0].decode()] = {
          "frames": frames, "label": ex["label"].int64_list.value[0],
          "keypoints": np.array(ex["pose/keypoints"].float_list.value).reshape(m, -1, j, 2),
          "scores": np.array(ex["pose/scores"].float_list.value).reshape(m, -1, j),
          "hw": (ex["video/height"].int64_list.value[0], ex["video/width"].int64_list.value[0])}
  return out


def skipped(data_dir, split):
  with open(os.path.join(data_dir, f"{split}-skipped.json")) as fh:
    s = json.load(fh)
  assert s["num_skipped"] == len(s["skipped"])
  return {e["id"]: e["reason"] for e in s["skipped"]}


def frame_error(a, b):
  return np.abs(a.astype(np.float64) - b.astype(np.float64)).mean()


def assert_frames_are(got, source, index, tol):
  """Record frame ``i`` is source frame ``index[i]``: within ``tol`` (mean absolute error, the
  codecs' loss) and nearer to it than to every source frame with other content (each fixture
  frame has its own square position), so a reversed, shifted or frozen video fails."""
  got, source = np.asarray(got, np.float64), np.asarray(source, np.float64)
  assert len(got) == len(index), (len(got), len(index))
  for i, want in enumerate(index):
    own = np.abs(got[i] - source[want]).mean()
    assert own < tol, (i, want, own)
    others = [np.abs(got[i] - source[j]).mean() for j in range(len(source))
              if np.abs(source[j] - source[want]).max() > 0]
    assert own < min(others), (i, want, own, min(others))


def resized(video, hw):
  import tensorflow as tf
  return tf.image.resize(np.asarray(video, np.float32), hw, antialias=True).numpy()


# ---------------------------------------------------------------- raw readers

def test_read_skeleton_three_bodies_and_missing_frames(rng, tmp_path):
  src = fx.ntu_sample(rng, str(tmp_path), "S001C001P001R001A050", bodies=3)
  t = ntu.read_skeleton(str(tmp_path / "skeletons" / "S001C001P001R001A050.skeleton"))
  assert t["color"].shape == (3, 12, 25, 2) and t["xyz"].shape == (3, 12, 25, 3)
  np.testing.assert_allclose(t["color"][0, :10], src["color"][:10], rtol=0, atol=1e-3)
  assert np.all(t["tracking"][0, 10:] == 0)  # the two missing frames
  assert np.all(t["tracking"][1, [0, 4, 5]] == 0) and np.all(t["tracking"][1, 1:4] == 2)
  scores = ntu.tracking_scores(t["tracking"])
  for m, person in enumerate(src["persons"]):
    np.testing.assert_array_equal(scores[m], person["scores"])
  # The still third body has the largest total score and no motion: ranked last by activity
  # (the NTU rule), first by score (the pose-estimator rule).
  np.testing.assert_array_equal(common.rank_persons(t["color"], scores, "motion"), [0, 1, 2])
  np.testing.assert_array_equal(common.rank_persons(t["color"], scores, "score"), [2, 0, 1])
  kp, sc = common.select_persons(t["color"], scores, 2, "motion")
  np.testing.assert_array_equal(kp, t["color"][:2])
  np.testing.assert_array_equal(sc, scores[:2])
  # A body never seen (all scores 0) is never kept; nobody at all is an error naming the source.
  sc0 = scores.copy()
  sc0[1] = 0
  np.testing.assert_array_equal(common.rank_persons(t["color"], sc0, "motion"), [0, 2])
  with pytest.raises(RawFormatError, match="x.skeleton: no person: 3 person"):
    common.select_persons(t["color"], 0 * scores, 2, "motion", source="x.skeleton")
  fx.ntu_sample(rng, str(tmp_path), "S001C001P001R001A051", bodies=0)
  with pytest.raises(RawFormatError, match=r"A051\.skeleton: no body in any of its 12 frames"):
    ntu.read_skeleton(str(tmp_path / "skeletons" / "S001C001P001R001A051.skeleton"))


def test_skeleton_corrupt_files_name_file_and_field(rng, tmp_path):
  fx.ntu_sample(rng, str(tmp_path), "S001C001P001R001A001", bodies=1)
  path = tmp_path / "skeletons" / "S001C001P001R001A001.skeleton"
  lines = path.read_text().splitlines()
  (tmp_path / "trunc.skeleton").write_text("\n".join(lines[:100]))
  with pytest.raises(RawFormatError, match=r"trunc\.skeleton: truncated"):
    ntu.read_skeleton(str(tmp_path / "trunc.skeleton"))
  bad = list(lines)
  bad[3] = "17"  # joint_count of frame 0, body 0
  (tmp_path / "joints.skeleton").write_text("\n".join(bad))
  with pytest.raises(RawFormatError, match=r"joints\.skeleton:4: joint_count: expected 25"):
    ntu.read_skeleton(str(tmp_path / "joints.skeleton"))
  bad = list(lines)
  bad[5] = "0.1 0.2"
  (tmp_path / "short.skeleton").write_text("\n".join(bad))
  with pytest.raises(RawFormatError, match=r"short\.skeleton:6: joint 1 .*expected 12 values"):
    ntu.read_skeleton(str(tmp_path / "short.skeleton"))


def test_ntu_names_and_official_splits():
  n = ntu.parse_name("/x/S018C002P045R001A094_rgb.avi")
  assert (n.setup, n.camera, n.subject, n.action, n.label) == (18, 2, 45, 94, 93)
  assert ntu.in_split(n, "xsub120", "train") and not ntu.in_split(n, "xsub120", "test")
  assert ntu.in_split(n, "xset120", "train")  # even setup
  assert not ntu.in_split(n, "xsub60", "train") and not ntu.in_split(n, "xsub60", "test")
  v = ntu.parse_name("S001C001P003R001A001")
  assert ntu.in_split(v, "xview60", "test") and ntu.in_split(v, "xsub60", "test")
  with pytest.raises(RawFormatError, match="notntu.skeleton"):
    ntu.parse_name("notntu.skeleton")
  assert len(ntu.ACTIONS) == 120 and ntu.ACTIONS[22] == "hand waving"


def test_penn_mat_reads_source_numbers_and_rejects_bad_fields(rng, tmp_path):
  import scipy.io

  src = fx.penn_sample(rng, str(tmp_path), "0001", "squat", train=True)
  lab = penn.read_label(str(tmp_path / "labels" / "0001.mat"))
  np.testing.assert_allclose(lab["keypoints"][..., 0], src["x"], rtol=1e-6)
  np.testing.assert_allclose(lab["keypoints"][..., 1], src["y"], rtol=1e-6)
  np.testing.assert_array_equal(lab["scores"], src["vis"])
  assert lab["label"] == penn.ACTIONS.index("squat") and lab["train"]
  m = scipy.io.loadmat(str(tmp_path / "labels" / "0001.mat"))
  m["x"] = m["x"][:, :12]
  scipy.io.savemat(str(tmp_path / "bad.mat"), m)
  with pytest.raises(RawFormatError, match=r"bad\.mat: field 'x' must be \(nframes, 13\)"):
    penn.read_label(str(tmp_path / "bad.mat"))
  (tmp_path / "junk.mat").write_bytes(b"not a mat file")
  with pytest.raises(RawFormatError, match=r"junk\.mat: unreadable"):
    penn.read_label(str(tmp_path / "junk.mat"))


def test_pyskl_persons_by_score_and_bad_fields(rng):
  for m in (1, 2, 3):
    a = fx.pyskl_annotation(rng, "clip", 3, 7, (40, 60), num_persons=m)
    for max_persons in (1, 2):
      kp, sc = pyskl.persons(a, 17, max_persons)
      keep = min(m, max_persons)
      np.testing.assert_array_equal(kp, a["keypoint"][:keep])  # highest total score first
      np.testing.assert_array_equal(sc, a["keypoint_score"][:keep])
  a = fx.pyskl_annotation(rng, "clip", 3, 7, (40, 60), num_persons=3)
  a["keypoint_score"] = a["keypoint_score"][::-1].copy()       # now person 2 scores highest
  np.testing.assert_array_equal(pyskl.persons(a, 17, 2)[0], a["keypoint"][[2, 1]])
  with pytest.raises(RawFormatError, match=r"p\.pkl: clip: no person \(field 'keypoint' has M = 0"):
    pyskl.persons(fx.pyskl_annotation(rng, "clip", 3, 7, (40, 60), num_persons=0), 17,
                  source="p.pkl")
  with pytest.raises(RawFormatError, match=r"p\.pkl: clip: field 'keypoint' must be"):
    pyskl.persons(a, 25, source="p.pkl")
  a["keypoint"][0, 2, 3, 0] = np.nan
  with pytest.raises(RawFormatError, match="NaN"):
    pyskl.persons(a, 17)


def test_ragged_fields_are_skipped_with_the_file_and_field_named(rng, tmp_path):
  """Persons with 17 and 18 joints make no single array: every reader's array conversion
  (``common.field_array``) names the file, sample and field, and a build lists the sample as
  skipped instead of stopping with nothing written."""
  a = fx.pyskl_annotation(rng, "clip", 3, 7, (40, 60), num_persons=2)
  a["keypoint"] = [a["keypoint"][0], np.concatenate([a["keypoint"][1], a["keypoint"][1][:, :1]], 1)]
  with pytest.raises(RawFormatError, match=r"p\.pkl: clip: field 'keypoint' is not one numeric "
                                           r"array of a single shape"):
    pyskl.persons(a, 17, source="p.pkl")
  del a["keypoint_score"]
  a["keypoint"] = a["keypoint"][0][None]
  with pytest.raises(RawFormatError, match=r"p\.pkl: clip: field 'keypoint_score' missing"):
    pyskl.persons(a, 17, source="p.pkl")
  status, key, reason = common.convert(
      {"key": "clip", "ann": dict(a, keypoint=[a["keypoint"][0], a["keypoint"][0][:, :5]])},
      load=lambda item, options: pyskl.persons(item["ann"], 17, source="p.pkl"),
      options=common.FrameOptions(None, None), num_classes=60, num_joints=17, jpeg_quality=90)
  assert (status, key) == ("skipped", "clip") and "field 'keypoint' is not one" in reason
  # The same for a user's pose JSON (launch/predict.py --poses).
  from data_pipelines import user_clip
  path = tmp_path / "poses.json"
  path.write_text(json.dumps({"keypoint": [[[[0.0, 0.0]] * 17], [[[0.0, 0.0]] * 18]],
                              "keypoint_score": [[[1.0] * 17]] * 2, "img_shape": [40, 60]}))
  with pytest.raises(user_clip.InputError, match=r"poses\.json: field 'keypoint' is not one"):
    user_clip.read_poses(str(path), 17, 2, 1, (40, 60))


def test_finegym_windows_and_lists(rng, tmp_path):
  src = fx.finegym_dir(rng, str(tmp_path))
  info = finegym.read_info(str(tmp_path / "finegym_annotation_info_v1.1.json"))
  vid, t0, t1 = finegym.element_window("vidA-x_1_E_000000_000003_A_0001_0002", info)
  assert vid == "vidA-x_1" and (t0, t1) == pytest.approx((0.6, 1.4))
  assert finegym.element_window("abc_E_000120_000150_A_0003_0007", None) == ("abc", 123.0, 127.0)
  names = finegym.read_categories(str(tmp_path / "gym99_categories.txt"))
  assert len(names) == 99 and names[5] == "(VT) element number 5"
  train = finegym.read_element_list(str(tmp_path / "gym99_train_element_v1.1.txt"))
  assert train == src["lists"]["train"]
  (tmp_path / "bad.txt").write_text("vidA_E_000000_000003_A_0000_0001 120\n")
  with pytest.raises(RawFormatError, match=r"bad\.txt:1: label 120 outside"):
    finegym.read_element_list(str(tmp_path / "bad.txt"))


def test_video_reader_matches_written_frames_and_rejects_junk(rng, tmp_path):
  v = fx.frames(rng, 15, 32, 48)
  write_video(str(tmp_path / "a.avi"), v, fps=30)
  got, fps = read_video(str(tmp_path / "a.avi"))
  assert got.shape == v.shape and fps == 30
  assert frame_error(got, v) < 4.0  # MPEG-4 at 4 Mbit/s on smooth frames
  part, _ = read_video(str(tmp_path / "a.avi"), 0.1, 0.3)
  assert len(part) == 6  # frames 3..8 (t = 0.1 .. 0.2667)
  (tmp_path / "junk.avi").write_bytes(JUNK_VIDEO)
  with pytest.raises(RawFormatError, match=r"junk\.avi: unreadable video"):
    read_video(str(tmp_path / "junk.avi"))
  with pytest.raises(RawFormatError, match=r"missing\.avi: video file not found"):
    read_video(str(tmp_path / "missing.avi"))


def test_missing_converter_module_says_which_extra_installs_it(monkeypatch):
  """TFDS, Beam, PyAV and SciPy come with the ``convert`` extra, not ``data``: without them the
  error names the module, what needed it and the install command."""
  assert common.require("json", "anything") is json
  with pytest.raises(ImportError, match=r"decoding videos needs the 'no_such_module_d3d'.*"
                                        r"\.\[data,convert\]"):
    common.require("no_such_module_d3d", "decoding videos")
  import sys
  monkeypatch.setitem(sys.modules, "av", None)  # as if PyAV were not installed
  with pytest.raises(ImportError, match=r"decoding videos needs the 'av' module"):
    read_video(os.path.join(os.path.dirname(__file__), "data", "ntu_sample.avi"))



def test_first_command_trains_without_the_converters_extra():
  """README's first command installs ``.[data]`` only: with TFDS, Beam, PyAV and SciPy blocked
  (``sys.modules[name] = None``, as if not installed) in a fresh process, everything
  ``launch/train.py`` loads for the embedded dataset imports, and the converters' package names
  the extra to install instead of failing with a bare ModuleNotFoundError."""
  code = ("import sys\n"
          "for m in ('tensorflow_datasets', 'apache_beam', 'av', 'scipy'): sys.modules[m] = None\n"
          "import launch.train, data_pipelines.embedded, data_pipelines.loaders\n"
          "import data_pipelines.input_pipeline, data_pipelines.service, deform3d.train.trainer\n"
          "try:\n"
          "  import data_pipelines.datasets\n"
          "except ImportError as e:\n"
          "  print('refused:', e)\n")
  last = fresh_python(code)
  assert last.startswith("refused: building the paper's datasets"), last
  assert "'tensorflow_datasets'" in last and ".[data,convert]" in last, last


def test_resampling_and_keypoint_scaling():
  np.testing.assert_array_equal(common.resample_indices(10, 30, 15), [0, 2, 4, 6, 8])
  np.testing.assert_array_equal(common.resample_indices(10, 30, 60), np.arange(10))
  np.testing.assert_array_equal(common.resample_indices(9, 30, 20), [0, 1, 3, 4, 6, 7])
  assert common.target_size(1080, 1920, 256) == (256, 455)
  kp = np.array([[[-0.5, -0.5], [1919.5, 1079.5]]], np.float32)  # image corners
  out = common.scale_keypoints(kp, (1080, 1920), (256, 455))
  np.testing.assert_allclose(out, [[[-0.5, -0.5], [454.5, 255.5]]], atol=1e-3)


# ---------------------------------------------------------------- builders

@pytest.fixture(scope="module")
def raw(tmp_path_factory):
  """Raw folders of all five sources, each with valid samples and corrupt ones."""
  rng = np.random.default_rng(1234)
  root = tmp_path_factory.mktemp("raw")
  d = {}
  # NTU (.skeleton + .avi): NTU60 and NTU120 samples with 1, 2 and 3 bodies, plus four corrupt
  # ones and one where nobody is seen.
  n = str(root / "ntu")
  bodies = {"S001C001P001R001A010": 1, "S001C002P003R002A023": 2, "S002C003P002R001A055": 3,
            "S018C001P045R001A094": 2, "S019C002P046R001A120": 1}
  d["ntu"] = {name: fx.ntu_sample(rng, n, name, bodies=b) for name, b in bodies.items()}
  fx.ntu_sample(rng, n, "S001C001P001R001A005", bodies=0)
  sk = os.path.join(n, "skeletons")
  fx.ntu_sample(rng, n, "S001C001P001R001A002")
  lines = open(os.path.join(sk, "S001C001P001R001A002.skeleton")).read().splitlines()
  open(os.path.join(sk, "S001C001P001R001A002.skeleton"), "w").write("\n".join(lines[:90]))
  fx.ntu_sample(rng, n, "S001C001P001R001A003")
  lines[3] = "24"
  open(os.path.join(sk, "S001C001P001R001A003.skeleton"), "w").write("\n".join(lines))
  fx.ntu_sample(rng, n, "S001C001P001R001A004")
  open(os.path.join(n, "videos", "S001C001P001R001A004_rgb.avi"), "wb").write(JUNK_VIDEO)
  # pyskl (NTU60 HRNet poses) with the NTU videos: 1, 3, 2 and 0 persons; one label outside the
  # 60 classes, one unreadable video.
  anns, split = [], {"xsub_train": [], "xsub_val": [], "xview_train": [], "xview_val": []}
  for name, persons in (("S001C001P001R001A010", 1), ("S001C002P003R002A023", 3),
                        ("S002C003P002R001A055", 2), ("S001C001P001R001A004", 2),
                        ("S001C001P001R001A005", 0)):
    label = 77 if name.endswith("A055") else ntu.parse_name(name).label
    anns.append(fx.pyskl_annotation(rng, name, label, 12, (1080, 1920), num_persons=persons))
    s = ntu.parse_name(name)
    split["xsub_" + ("train" if ntu.in_split(s, "xsub60", "train") else "val")].append(name)
  fx.write_pickle(os.path.join(n, "ntu60_hrnet.pkl"), split, anns)
  d["pyskl"] = {a["frame_dir"]: a for a in anns}
  # Penn Action: three clips, one with a label field of the wrong shape.
  p = str(root / "penn")
  d["penn"] = {"0001": fx.penn_sample(rng, p, "0001", "squat", True),
               "0002": fx.penn_sample(rng, p, "0002", "bowl", False),
               "0003": fx.penn_sample(rng, p, "0003", "pushup", True)}
  import scipy.io
  m = scipy.io.loadmat(os.path.join(p, "labels", "0003.mat"))
  m["visibility"] = m["visibility"][:, :11]
  scipy.io.savemat(os.path.join(p, "labels", "0003.mat"), m)
  # FineGYM.
  d["finegym"] = fx.finegym_dir(rng, str(root / "finegym"))
  d["root"] = root
  return d


@pytest.fixture(scope="module")
def built(raw, tmp_path_factory):
  out = str(tmp_path_factory.mktemp("tfds"))
  r = raw["root"]
  return {
      "ntu60": build("ntu_rgbd/ntu60_xsub", str(r / "ntu"), out, short_side=0)[0],
      "ntu120": build("ntu_rgbd/ntu120_xset", str(r / "ntu"), out, short_side=0)[0],
      "pyskl": build("ntu_rgbd_hrnet/ntu60_xsub", str(r / "ntu"), out, short_side=32)[0],
      "penn": build("penn_action", str(r / "penn"), out, short_side=0)[0],
      "finegym": build("finegym/gym99", str(r / "finegym"), out, short_side=0)[0],
  }


@pytest.mark.slow
def test_ntu_kinect_records_equal_source(raw, built):
  train, test = read_records(built["ntu60"], "train"), read_records(built["ntu60"], "test")
  assert sorted(train) == ["S001C001P001R001A010", "S002C003P002R001A055"]
  assert sorted(test) == ["S001C002P003R002A023"]  # subject 3 is a test subject
  for name, rec in {**train, **test}.items():
    src = raw["ntu"][name]
    h, w = src["video_hw"]
    # Up to two bodies, the most active first (the third, still body is dropped).
    persons = src["persons"][:ntu.MAX_PERSONS]
    assert rec["keypoints"].shape == (len(persons), 12, 25, 2)
    for m, person in enumerate(persons):
      want = common.scale_keypoints(person["color"], ntu.COLOR_HW, (h, w))
      want[person["scores"] == 0] = 0
      np.testing.assert_allclose(rec["keypoints"][m], want, rtol=0, atol=2e-3)
      np.testing.assert_array_equal(rec["scores"][m], person["scores"])
    assert rec["label"] == src["label"] and rec["hw"] == (h, w)
    assert_frames_are(rec["frames"], src["video"], range(len(src["video"])), 5.0)
  assert [len(train[k]["keypoints"]) for k in sorted(train)] == [1, 2]  # A010: 1, A055: 3 -> 2
  bad = skipped(built["ntu60"], "train")
  assert set(bad) == {"S001C001P001R001A002", "S001C001P001R001A003", "S001C001P001R001A004",
                      "S001C001P001R001A005"}
  assert "S001C001P001R001A005.skeleton: no body in any of its 12 frames" in \
      bad["S001C001P001R001A005"]
  assert "S001C001P001R001A002.skeleton: truncated" in bad["S001C001P001R001A002"]
  assert "S001C001P001R001A003.skeleton:4: joint_count" in bad["S001C001P001R001A003"]
  assert "S001C001P001R001A004_rgb.avi: unreadable video" in bad["S001C001P001R001A004"]
  labels = open(os.path.join(built["ntu60"], "label.labels.txt")).read().split("\n")
  assert len([l for l in labels if l]) == 60


@pytest.mark.slow
def test_ntu120_xset_split(raw, built):
  train, test = read_records(built["ntu120"], "train"), read_records(built["ntu120"], "test")
  assert sorted(train) == ["S002C003P002R001A055", "S018C001P045R001A094"]
  assert sorted(test) == ["S001C001P001R001A010", "S001C002P003R002A023",
                          "S019C002P046R001A120"]
  assert test["S019C002P046R001A120"]["label"] == 119


@pytest.mark.slow
def test_pyskl_records_equal_source(raw, built):
  train = read_records(built["pyskl"], "train")
  test = read_records(built["pyskl"], "test")
  assert sorted(train) == ["S001C001P001R001A010"] and sorted(test) == ["S001C002P003R002A023"]
  for name, rec in {**train, **test}.items():
    a = raw["pyskl"][name]
    assert rec["hw"] == (32, 57)  # 54x96 video, short side 32
    keep = min(len(a["keypoint"]), ntu.MAX_PERSONS)  # A010: 1 person; A023: 2 of its 3
    assert rec["keypoints"].shape == (keep, 12, 17, 2)
    kp = common.scale_keypoints(a["keypoint"][:keep], (1080, 1920), (54, 96))
    want = common.scale_keypoints(kp, (54, 96), (32, 57))
    np.testing.assert_allclose(rec["keypoints"], want, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(rec["scores"], a["keypoint_score"][:keep], rtol=1e-6)
    # The frames: the NTU sample's video at short side 32.
    video = raw["ntu"][name]["video"]
    assert_frames_are(rec["frames"], resized(video, (32, 57)), range(len(video)), 6.0)
  assert len(test["S001C002P003R002A023"]["keypoints"]) == 2
  bad = skipped(built["pyskl"], "train")
  assert "label 77 outside the class list [0, 60)" in bad["S002C003P002R001A055"]
  assert "unreadable video" in bad["S001C001P001R001A004"]
  assert "S001C001P001R001A005: no person (field 'keypoint' has M = 0" in \
      bad["S001C001P001R001A005"]


@pytest.mark.slow
def test_penn_records_equal_source(raw, built):
  train, test = read_records(built["penn"], "train"), read_records(built["penn"], "test")
  assert sorted(train) == ["0001"] and sorted(test) == ["0002"]
  for stem, rec in {**train, **test}.items():
    src = raw["penn"][stem]
    want = np.stack([src["x"], src["y"]], -1) * (src["vis"] > 0)[..., None]
    np.testing.assert_allclose(rec["keypoints"], want[None], rtol=1e-6, atol=1e-4)  # 1 person
    np.testing.assert_array_equal(rec["scores"], src["vis"][None])
    assert_frames_are(rec["frames"], src["video"], range(len(src["video"])), 3.0)
  assert rec["label"] == penn.ACTIONS.index("bowl")
  assert "0003.mat: field 'visibility' must be (nframes, 13)" in skipped(built["penn"], "train")["0003"]


@pytest.mark.slow
def test_finegym_records_equal_source(raw, built):
  src = raw["finegym"]
  for split in ("train", "test"):
    recs = read_records(built["finegym"], split)
    assert sorted(recs) == sorted(e for e, _ in src["lists"][split])
    for eid, label in src["lists"][split]:
      a, rec = src["anns"][eid], recs[eid]
      assert rec["label"] == label and len(rec["frames"]) == a["total_frames"]
      # The element's own window of the event video (30 fps; the event starts at 0.1 s).
      vid, start, end = src["windows"][eid]
      video = src["videos"][vid]
      window = [i for i in range(len(video)) if start <= i / 30 < end]
      assert_frames_are(rec["frames"], video, window, 5.0)
      # The gymnast: of the annotation's two persons, the one with the larger total score.
      np.testing.assert_allclose(rec["keypoints"], a["keypoint"][:1], rtol=1e-5, atol=1e-3)
  classes = records.read_classes(built["finegym"])
  assert len(classes) == 99 and classes[7] == "(VT) element number 7"


@pytest.mark.slow
def test_beam_multi_worker_build_equals_single_worker(raw, tmp_path):
  one = build("ntu_rgbd/ntu60_xsub", str(raw["root"] / "ntu"), str(tmp_path / "w1"),
              workers=1, short_side=24)[0]
  two = build("ntu_rgbd/ntu60_xsub", str(raw["root"] / "ntu"), str(tmp_path / "w2"),
              workers=2, short_side=24)[0]
  files1 = sorted(os.path.basename(f) for f in glob.glob(one + "/*tfrecord*"))
  assert files1 == sorted(os.path.basename(f) for f in glob.glob(two + "/*tfrecord*"))
  assert files1
  for f in files1:
    a = open(os.path.join(one, f), "rb").read()
    assert a == open(os.path.join(two, f), "rb").read(), f
  assert skipped(one, "train") == skipped(two, "train")


@pytest.mark.heavy
@pytest.mark.parametrize("name,spec", [
    ("ntu60", "ntu:split=xsub60,pose=kinect"), ("ntu120", "ntu:split=xset120,pose=kinect"),
    ("pyskl", "ntu:split=xsub60"), ("penn", "pennaction"), ("finegym", "finegym")])
def test_training_reads_converted_fixture(built, tmp_path, name, spec):
  """What ``launch/train.py`` runs, in this process: the build's config file with its
  ``runlocal`` variant pointed at the build, the input pipeline, two training steps and the
  evaluation on the build's test split. The model and clips are cut to the micro variant's
  (one block, 2 frames of 16 px; the joint layout, persons and classes stay the dataset's): the
  records' way through the pipeline and both steps is what is tested, not the model."""
  from configs.common import load
  from data_pipelines import loaders
  from deform3d.train import trainer
  from tests import micro_config
  config = load(spec + ("," if ":" in spec else ":") + "runlocal=true")
  config.dataset.data_dir = built[name]
  micro = micro_config(built[name])
  config.num_frames, config.image_size = micro.num_frames, micro.image_size
  for key in ("depth", "joint_strides", "temporal_strides"):
    config.model[key] = micro.model[key]
  lines = []
  out = trainer.train(config, str(tmp_path),
                      make_train_iter=lambda s: loaders.train_iter(config, s),
                      make_eval_iter=lambda: loaders.eval_iter(config), log=lines.append)
  assert any(l.startswith("step 2/2") for l in lines), lines
  assert int(out["state"].step) == 2 and np.isfinite(out["train"]["loss"])
  test_clips = len(read_records(built[name], "test"))
  assert out["eval"]["num_examples"] == test_clips > 0
  assert out["trainer"].model.num_classes == config.model.num_classes
