"""A user's own clip: launch/extract_poses.py, launch/predict.py and their errors, on a real NTU
RGB+D clip (tests/data/ntu_sample.avi; tests/data/README.md says where it comes from)."""
import json
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("tensorflow")
from data_pipelines import records, user_clip  # noqa: E402
from data_pipelines.skeletons import COCO17  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIP = os.path.join(ROOT, "tests", "data", "ntu_sample.avi")
POSES_PYTHON = os.environ.get("DEFORM3D_POSES_PYTHON",
                              os.path.join(ROOT, ".venv-poses", "bin", "python"))


def poses_python():
  """The pose environment; CI (``.ci/run``) creates it, so there a missing one is a failure."""
  if not os.path.exists(POSES_PYTHON):
    if os.environ.get("CI"):
      pytest.fail(f"no pose environment at {POSES_PYTHON} (.ci/run creates it)")
    pytest.skip(f"no pose environment at {POSES_PYTHON}: python3 -m venv .venv-poses && "
                ".venv-poses/bin/pip install -r launch/requirements-poses.txt")
  return POSES_PYTHON


def run(args, **kw):
  return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=900, **kw)


@pytest.fixture(scope="module")
def ntu_poses(tmp_path_factory):
  """launch/extract_poses.py on the real clip."""
  out = str(tmp_path_factory.mktemp("poses") / "ntu_sample")
  proc = run([poses_python(), "launch/extract_poses.py", "--video", CLIP, "--out", out])
  assert proc.returncode == 0, proc.stderr[-3000:]
  return out


def test_extract_poses_finds_the_person_in_the_real_clip(ntu_poses):
  info = json.load(open(ntu_poses + ".json"))
  assert info["total_frames"] == 72 and info["img_shape"] == [1080, 1920]
  assert info["joints"] == list(COCO17)
  assert len(info["frames_without_person"]) <= 4, info["frames_without_person"]
  kp = np.asarray(info["keypoint"])[0]                      # (T, 17, 2) pixels
  sc = np.asarray(info["keypoint_score"])[0]
  assert kp.shape == (72, 17, 2) and sc.shape == (72, 17)
  found = sc.max(axis=1) > 0
  j = {n: i for i, n in enumerate(COCO17)}
  y = lambda *names: np.median(kp[found][:, [j[n] for n in names], 1])
  # An upright person: head above shoulders above hips above knees above ankles (image y down).
  assert y("nose") < y("left_shoulder", "right_shoulder") < y("left_hip", "right_hip") < \
      y("left_knee", "right_knee") < y("left_ankle", "right_ankle")
  height = y("left_ankle", "right_ankle") - y("nose")
  assert 200 < height < 1080, height                        # pixels of the 1080-line frame
  assert np.all((kp[found] >= -50) & (kp[found] <= [1970, 1130]))
  # The pickle is a pyskl annotation that the dataset converters' reader accepts.
  from data_pipelines.datasets import pyskl
  _, anns = pyskl.load(ntu_poses + ".pkl")
  kp2, sc2 = pyskl.persons(anns["ntu_sample"], 17, 2, source="test")
  assert kp2.shape == (1, 72, 17, 2)
  np.testing.assert_allclose(kp2[0], kp, atol=0.01)


@pytest.mark.heavy
def test_predict_and_explain_the_real_clip(ntu_poses, explained_model, tmp_path):
  """A briefly trained embedded model (the session's ``explained_model``, tests/conftest.py:
  150 steps) classifies the real clip (from the extracted poses, and with the poses estimated
  on the fly) and writes its explanation PNGs."""
  from configs.embedded import get_config
  from data_pipelines import embedded
  config = get_config()
  base = [sys.executable, "launch/predict.py", "--config", "configs/embedded.py", "--workdir",
          explained_model["workdir"], "--video", CLIP] + explained_model["overrides"]
  out = str(tmp_path / "pred")
  proc = run(base + ["--poses", ntu_poses + ".pkl", "--explain", "--out", out])
  assert proc.returncode == 0, proc.stderr[-3000:]
  pred = json.load(open(os.path.join(out, "prediction.json")))
  assert pred["frames"] == 72 and pred["clips"] == config.dataset.eval_clips
  assert pred["checkpoint_step"] == explained_model["steps"]
  names = [p["name"] for p in pred["top"]]
  assert len(names) == 5 and set(names) <= set(embedded.CLASSES)
  probs = [p["prob"] for p in pred["top"]]
  assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
  assert names[0] in proc.stdout
  import matplotlib.image
  for path in pred["explanation"]:
    assert os.path.exists(path), path
    if path.endswith(".png"):
      img = matplotlib.image.imread(path)
      assert img.shape[0] > 100 and img[..., :3].std() > 0.05
  e = json.load(open(pred["explanation"][-1]))
  assert e["method"] == "attention" and len(e["joint_names"]) == 34  # 2 persons x 17
  # Poses estimated on the fly (no --poses): the same poses, so the same prediction.
  out2 = str(tmp_path / "pred2")
  proc = run(base + ["--poses_python", poses_python(), "--out", out2])
  assert proc.returncode == 0, proc.stderr[-3000:]
  pred2 = json.load(open(os.path.join(out2, "prediction.json")))
  assert [p["name"] for p in pred2["top"]] == names
  np.testing.assert_allclose([p["prob"] for p in pred2["top"]], probs, atol=1e-3)


def _pyskl(path, frames, joints, persons=1):
  kp = np.full((persons, frames, joints, 2), 500.0, np.float32)
  ann = {"frame_dir": "clip", "label": -1, "img_shape": (1080, 1920), "total_frames": frames,
         "keypoint": kp, "keypoint_score": np.ones(kp.shape[:3], np.float32)}
  with open(path, "wb") as fh:
    pickle.dump({"split": {"predict": ["clip"]}, "annotations": [ann]}, fh)
  return str(path)


def test_bad_pose_files_name_the_file_and_what_is_wrong(tmp_path):
  read = lambda p: user_clip.read_poses(p, 17, 2, 72, (1080, 1920))
  kp, sc = read(_pyskl(tmp_path / "ok.pkl", 72, 17))
  assert kp.shape == (1, 72, 17, 2) and sc.shape == (1, 72, 17)
  bad = _pyskl(tmp_path / "joints.pkl", 72, 25)
  with pytest.raises(user_clip.InputError, match=r"joints.pkl.*'keypoint' must be .*\(M, 72, 17, 2\)"):
    read(bad)
  bad = _pyskl(tmp_path / "frames.pkl", 50, 17)
  with pytest.raises(user_clip.InputError, match=r"frames.pkl: 50 frames of poses, but the video "
                                                 r"has 72 frames"):
    read(bad)
  coco = tmp_path / "coco.json"
  coco.write_text(json.dumps([{"image_id": 0, "keypoints": [1.0] * 51, "score": 0.9},
                              {"image_id": 3, "keypoints": [1.0] * 39, "score": 0.9}]))
  with pytest.raises(user_clip.InputError, match=r"coco.json: entry 1: field 'keypoints' must "
                                                 r"hold 17 joints .* = 51 numbers, got 39"):
    read(str(coco))
  coco.write_text(json.dumps([{"image_id": f, "keypoints": [10.0, 20.0, 0.8] * 17, "score": 1}
                              for f in range(72)]))
  kp, sc = read(str(coco))
  assert kp.shape == (1, 72, 17, 2) and np.all(kp[..., 0] == 10.0) and np.all(sc == 0.8)
  with pytest.raises(user_clip.InputError, match="missing.pkl: pose file not found"):
    read(str(tmp_path / "missing.pkl"))
  with pytest.raises(user_clip.InputError, match="ntu_sample.avi: unknown pose file type"):
    read(CLIP)


@pytest.mark.slow
def test_bad_videos_name_the_file(tmp_path):
  junk = tmp_path / "junk.mp4"
  junk.write_bytes(b"this is not a video" * 100)
  with pytest.raises(user_clip.InputError, match="junk.mp4: unreadable video"):
    user_clip.read_video(str(junk))
  # The whole command: the error, no traceback, nothing written.
  data = tmp_path / "data"
  data.mkdir()
  records.write_classes(str(data), ["a", "b"])
  out = tmp_path / "out"
  proc = run([sys.executable, "launch/predict.py", "--config", "configs/embedded.py",
              "--workdir", str(tmp_path / "w"), "--video", str(junk), "--out", str(out),
              f"--config.dataset.data_dir={data}"])
  assert proc.returncode != 0
  assert "predict:" in proc.stderr and "junk.mp4: unreadable video" in proc.stderr
  assert "Traceback" not in proc.stderr and not out.exists()


def test_extract_poses_refuses_a_clip_without_a_person(tmp_path):
  """A clip of a plain wall: no person in any frame -> an error naming the file; no output."""
  import av
  path = str(tmp_path / "wall.mp4")
  with av.open(path, "w") as container:
    stream = container.add_stream("mpeg4", rate=10)
    stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
    for i in range(6):
      img = np.full((120, 160, 3), 90 + 10 * i, np.uint8)
      for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)
  out = str(tmp_path / "wall_poses")
  proc = run([poses_python(), "launch/extract_poses.py", "--video", path, "--out", out])
  assert proc.returncode != 0
  assert "wall.mp4: no person found in any of its 6 frames (160x120)" in proc.stderr
  assert not os.path.exists(out + ".pkl") and not os.path.exists(out + ".json")
  junk = tmp_path / "junk.avi"
  junk.write_bytes(b"\x00" * 1000)
  proc = run([poses_python(), "launch/extract_poses.py", "--video", str(junk), "--out", out])
  assert proc.returncode != 0 and "junk.avi" in proc.stderr


def test_pose_files_of_another_image_size_and_ntu_skeletons_land_on_the_video(tmp_path):
  """A pose file's pixels are of its own image size: a pyskl annotation made on a 960x540 copy
  and an NTU ``.skeleton`` (Kinect colour pixels, 1920x1080) both come out in the video's pixels
  (centres stay centres: ``x' = (x + 0.5) * W / w - 0.5``), here for a 96x54 video."""
  from tests.raw_fixtures import write_skeleton
  rng = np.random.default_rng(0)
  video_hw, frames = (54, 96), 6
  xy = rng.uniform(0, 500, (1, frames, 17, 2)).astype(np.float32)
  ann = {"frame_dir": "clip", "label": -1, "img_shape": (540, 960), "total_frames": frames,
         "keypoint": xy, "keypoint_score": np.ones(xy.shape[:3], np.float32)}
  path = tmp_path / "half.pkl"
  with open(path, "wb") as fh:
    pickle.dump({"split": {"predict": ["clip"]}, "annotations": [ann]}, fh)
  kp, _ = user_clip.read_poses(str(path), 17, 1, frames, video_hw)
  want = np.stack([(xy[..., 0] + 0.5) * 96 / 960 - 0.5, (xy[..., 1] + 0.5) * 54 / 540 - 0.5], -1)
  np.testing.assert_allclose(kp, want, rtol=1e-6, atol=1e-4)
  # NTU .skeleton: one body, every joint tracked; 25 Kinect joints.
  color = np.round(rng.uniform(0, 1900, (frames, 25, 2)), 4)
  color[..., 1] *= 1000 / 1900
  skel = str(tmp_path / "S001C001P001R001A001.skeleton")
  write_skeleton(skel, [(1, color, rng.normal(0, 1, (frames, 25, 3)),
                         np.full((frames, 25), 2))], frames, [set(range(frames))])
  kp, sc = user_clip.read_poses(skel, 25, 2, frames, video_hw)
  assert kp.shape == (1, frames, 25, 2) and np.all(sc > 0)
  want = np.stack([(color[..., 0] + 0.5) * 96 / 1920 - 0.5,
                   (color[..., 1] + 0.5) * 54 / 1080 - 0.5], -1)
  np.testing.assert_allclose(kp[0], want, rtol=1e-6, atol=1e-3)
  with pytest.raises(user_clip.InputError, match=r"S001C001P001R001A001.skeleton: an NTU "
                                                 r"\.skeleton has 25 Kinect joints"):
    user_clip.read_poses(skel, 17, 2, frames, video_hw)
