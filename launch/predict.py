"""Classify a user's own video with a trained checkpoint (and explain it).

    python launch/predict.py --config configs/embedded.py --workdir workdirs/embedded \
        --video clip.mp4 [--poses clip_poses.pkl] [--explain] [--method integrated_gradients]

1. Poses: ``--poses`` (a pyskl annotation pickle such as ``launch/extract_poses.py`` writes, its
   JSON, a COCO-style keypoint-results JSON ``[{"image_id": frame, "keypoints": [x, y, v] * J,
   "score"}, ...]``, or an NTU ``.skeleton``), else ``launch/extract_poses.py`` runs on the video
   in the pose environment (``--poses_python``, default ``.venv-poses/bin/python``; README "Your
   own clip"). Coordinates are pixels of the video (or of the annotation's ``img_shape``).
2. The video is decoded (PyAV) and the clip goes through the evaluation preprocessing of the
   config exactly: it is written as a one-clip split and read back by the input pipeline
   (``eval_clips`` clips per video, centre crop, ``num_frames`` frames, ``image_size`` pixels).
3. The jitted model's logits are averaged over the clips (as ``launch/eval.py`` does) and the
   top-5 printed with class names; ``--out`` (default ``WORKDIR/predict_NAME``) gets
   ``prediction.json`` and, with ``--explain``, the explanation PNGs/JSON of the first clip
   (``--method`` as in ``launch/explain.py``).

Bad input (a video that cannot be decoded, a pose file with another joint count or frame count
than the video, a clip where no person is found) stops with a message naming the file and what
is wrong; nothing is written.
"""
import json
import os
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir with checkpoints/.",
                               required=True)
_VIDEO = flags.DEFINE_string("video", None, "The video to classify.", required=True)
_POSES = flags.DEFINE_string("poses", None, "Pose file (.pkl pyskl annotation, .json, "
                             ".skeleton); default: estimate with launch/extract_poses.py.")
_POSES_PYTHON = flags.DEFINE_string(
    "poses_python", os.environ.get("DEFORM3D_POSES_PYTHON",
                                   os.path.join(ROOT, ".venv-poses", "bin", "python")),
    "Python of the pose environment (launch/requirements-poses.txt).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
_EXPLAIN = flags.DEFINE_bool("explain", False, "Also write the explanation PNGs of the clip.")
_METHOD = flags.DEFINE_enum("method", "attention", ["attention", "rollout", "grad_attention",
                                                    "integrated_gradients"],
                            "--explain: how joint importance is computed.")
_OUT = flags.DEFINE_string("out", None, "Output directory (default: WORKDIR/predict_NAME).")
_TOP = flags.DEFINE_integer("top", 5, "Classes printed.")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  import jax
  import numpy as np
  from data_pipelines import loaders
  from data_pipelines.records import read_classes
  from data_pipelines.skeletons import BONES, LAYOUTS
  from data_pipelines.user_clip import (InputError, estimate_poses, preprocess, read_poses,
                                        read_video)
  from deform3d import explain
  from deform3d.train import trainer

  config = _CONFIG.value
  video = _VIDEO.value
  name = os.path.splitext(os.path.basename(video))[0]
  layout = config.dataset.joint_layout
  num_joints = len(LAYOUTS[layout])
  classes = list(read_classes(config.dataset.data_dir))
  try:
    frames, fps = read_video(video)
    with tempfile.TemporaryDirectory() as tmp:
      poses = _POSES.value or estimate_poses(video, tmp, _POSES_PYTHON.value, ROOT)
      kp, sc = read_poses(poses, num_joints, config.dataset.get("max_persons", 1),
                          len(frames), frames.shape[1:3])
  except InputError as e:
    raise SystemExit(f"predict: {e}")
  clips, keypoints, pixels = preprocess(config, frames, kp, sc, fps, name, len(classes))

  try:
    tr, state, step = trainer.load_trained(config, _WORKDIR.value, loaders.input_shapes(config),
                                           _STEP.value)
  except FileNotFoundError as e:
    raise SystemExit(str(e))
  params = jax.device_get(state.params)
  # The evaluation step's own function: the logits of the video's clips, averaged.
  logits = jax.jit(tr._eval_step)(params, {"frames": clips[None], "keypoints": keypoints[None]})
  out = _OUT.value or os.path.join(_WORKDIR.value, f"predict_{name}")
  os.makedirs(out, exist_ok=True)
  result = {"video": os.path.abspath(video), "poses": _POSES.value or "estimated",
            "checkpoint_step": int(step), "clips": int(len(clips)), "frames": int(len(frames)),
            "top": explain.top_predictions(np.asarray(logits)[0], classes, _TOP.value)}
  print(f"{video}: {len(frames)} frames, {len(clips)} clip(s), checkpoint step {step}")
  for r in result["top"]:
    print(f"  {r['prob']:.3f}  {r['name']}")
  if _EXPLAIN.value:
    explain.write_explanations(
        out, tr.model, params, clips[:1], keypoints[:1], pixels[:1], stems=[name],
        captions=[f"{name} (clip 1 of {len(clips)})"], joint_names=LAYOUTS[layout],
        bones=BONES[layout], class_names=classes, method=_METHOD.value,
        extra=[{"video": os.path.abspath(video), "clip": 0}])
    result["explanation"] = [os.path.join(out, f"{name}{s}") for s in
                             ("_skeleton.png", "_heatmap.png", "_points.png", ".json")]
  with open(os.path.join(out, "prediction.json"), "w") as fh:
    json.dump(result, fh, indent=1)
  print(f"-> {out}", flush=True)


if __name__ == "__main__":
  from deform3d import host_malloc
  host_malloc.maybe_reexec()  # with DEFORM3D_HOST_MALLOC=1 (docs/performance.md)
  app.run(main)
