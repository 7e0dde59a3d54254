"""Explain a trained checkpoint: ``python launch/explain.py --config C --workdir W``.

For clips of ``--split`` (default: the first clip of every class; or ``--clips 0,7`` by position
in the split, or ``--class_name wave_red_flag --num 2``) it restores the checkpoint, runs the
model once with its attention maps (``deform3d.models.attention_maps``) and writes to ``--out``
(default ``WORKDIR/explain_SPLIT``):

* ``clipNNNNN_skeleton.png``: frames with the skeleton, joints sized and coloured by importance;
* ``clipNNNNN_heatmap.png``: time x joints importance, frame weights, each joint's lift over the
  uniform share;
* ``clipNNNNN_points.png``: the 3-D deformable sampling points of each block over the frames;
* ``clipNNNNN.json``: the numbers (docs/explain.md defines them) and the top-5 prediction;
* ``summary.png`` / ``summary.json``: mean joint lift per class over the explained clips.
"""
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir with checkpoints/.",
                               required=True)
_SPLIT = flags.DEFINE_string("split", None, "Split to read clips from (default: test for the "
                             "embedded dataset, else the config's eval split).")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: latest).")
_CLIPS = flags.DEFINE_list("clips", None, "Positions of clips in the split (0-based, in the "
                           "order launch/eval.py reads it).")
_CLASS = flags.DEFINE_string("class_name", None, "Explain clips of this class only.")
_NUM = flags.DEFINE_integer("num", 1, "Clips per class (with --class_name or by default).")
_BLOCKS = flags.DEFINE_list("blocks", None, "Blocks averaged in the summary maps (default: the "
                            "first; every block's maps are in the JSON). docs/explain.md says why.")
_OUT = flags.DEFINE_string("out", None, "Output directory (default: WORKDIR/explain_SPLIT).")


def select(labels, classes, clips=None, class_name=None, num=1):
  """Positions to explain: ``clips`` as given, else the first ``num`` of ``class_name`` or of
  every class. Errors name the split size or the known classes."""
  if clips:
    bad = [c for c in clips if not 0 <= c < len(labels)]
    if bad:
      raise ValueError(f"--clips {bad} outside the split's {len(labels)} clips")
    return list(clips)
  if class_name is not None:
    if class_name not in classes:
      raise ValueError(f"--class_name {class_name!r} is not one of {list(classes)}")
    wanted = [classes.index(class_name)]
  else:
    wanted = range(len(classes))
  out = []
  for k in wanted:
    out += [i for i, y in enumerate(labels) if y == k][:num]
  return sorted(out)


def load_clips(config, split, positions):
  """Eval-processed clips (centre crop, one clip per video) at ``positions`` of ``split``."""
  import numpy as np
  from data_pipelines import input_pipeline
  from data_pipelines.skeletons import LAYOUTS

  ds = input_pipeline.make_dataset(
      config.dataset.data_dir, split, num_frames=config.num_frames,
      image_size=config.image_size, num_joints=len(LAYOUTS[config.dataset.joint_layout]),
      batch_size=64, train=False, num_clips=1, cache=False,
      max_persons=config.dataset.get("max_persons", 1))
  want, got, pos = set(positions), {}, 0
  for batch in input_pipeline.iterate(ds, source=(config.dataset.data_dir, split)):
    for i in range(len(batch["label"])):
      if pos in want:
        got[pos] = {k: v[i] for k, v in batch.items()}
      pos += 1
    if len(got) == len(want):
      break
  missing = sorted(want - set(got))
  if missing:
    raise ValueError(f"{config.dataset.data_dir} split {split!r} has no clips at {missing}")
  clips = [got[p] for p in positions]
  frames = np.stack([c["frames"][0] for c in clips])
  keypoints = np.stack([c["keypoints"][0] for c in clips])
  labels = np.array([c["label"] for c in clips])
  ids = [c["id"].decode() for c in clips]
  pixels = np.clip(frames * input_pipeline.STD + input_pipeline.MEAN, 0, 255).astype(np.uint8)
  return frames, keypoints, labels, ids, pixels


def plot_summary(path, lifts, joint_names, classes):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np
  names = sorted(lifts)
  grid = np.array([np.mean(lifts[c], axis=0) for c in names])
  fig, ax = plt.subplots(figsize=(0.42 * len(joint_names) + 3, 0.35 * len(names) + 2))
  im = ax.imshow(grid, cmap="RdBu_r", vmin=0, vmax=max(2.0, float(grid.max())), aspect="auto")
  ax.set_xticks(range(len(joint_names)))
  ax.set_xticklabels(joint_names, rotation=70, fontsize=7)
  ax.set_yticks(range(len(names)))
  ax.set_yticklabels([f"{classes[c]} ({len(lifts[c])})" for c in names], fontsize=7)
  ax.set_title("joint lift over uniform attention, mean over explained clips (1 = chance)",
               fontsize=9)
  fig.colorbar(im, ax=ax, fraction=0.03)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  import jax
  import numpy as np
  from data_pipelines import input_pipeline, loaders
  from data_pipelines.records import read_classes
  from data_pipelines.skeletons import BONES, LAYOUTS
  from deform3d import explain
  from deform3d.models import attention_maps
  from deform3d.train import trainer
  from deform3d.train.sharding import make_mesh

  config = _CONFIG.value
  split = _SPLIT.value or ("test" if config.dataset.name == "embedded"
                           else config.dataset.eval_split)
  classes = list(read_classes(config.dataset.data_dir))
  tr = trainer.Trainer(config, make_mesh(), loaders.input_shapes(config))
  try:
    state, step = trainer.restore_checkpoint(tr, _WORKDIR.value, config, _STEP.value)
  except FileNotFoundError as e:
    raise SystemExit(str(e))
  params = jax.device_get(state.params)

  try:
    positions = select(input_pipeline.eval_labels(config.dataset.data_dir, split), classes,
                       [int(c) for c in _CLIPS.value] if _CLIPS.value else None,
                       _CLASS.value, _NUM.value)
  except ValueError as e:
    raise SystemExit(f"{config.dataset.data_dir} split {split!r}: {e}")
  frames, keypoints, labels, ids, pixels = load_clips(config, split, positions)
  logits, maps = attention_maps(tr.model, {"params": params}, frames, keypoints)
  logits, maps = np.asarray(logits), jax.tree.map(np.asarray, maps)

  layout = config.dataset.joint_layout
  out = _OUT.value or os.path.join(_WORKDIR.value, f"explain_{split}")
  os.makedirs(out, exist_ok=True)
  lifts = {}
  for i, pos in enumerate(positions):
    blocks = [int(b) for b in _BLOCKS.value] if _BLOCKS.value else None
    # Several persons: their joints side by side ("p2:left_wrist"), every person's bones.
    kp, names, bones, present = explain.person_joints(keypoints[i], LAYOUTS[layout],
                                                      BONES[layout])
    e = explain.explain_clip(maps, tr.model, i, blocks=blocks, num_frames=config.num_frames,
                             joint_names=names, logits=logits, class_names=classes,
                             present=present if len(present) > 1 else None)
    e.update(clip=pos, id=ids[i], label=int(labels[i]), label_name=classes[labels[i]],
             checkpoint_step=int(step), split=split)
    stem = f"clip{pos:05d}"
    pred = e["prediction"][0]
    title = (f"{ids[i]}: true {classes[labels[i]]}, predicted {pred['name']} "
             f"({pred['prob']:.2f})")
    explain.save_all(out, stem, pixels[i], kp, e, bones, title=title)
    with open(os.path.join(out, f"{stem}.json"), "w") as fh:
      json.dump(e, fh)
    lifts.setdefault(int(labels[i]), []).append(e["joint_lift"])
    top = np.argsort(e["joint_lift"])[::-1][:3]
    print(f"{stem} ({classes[labels[i]]} -> {pred['name']} {pred['prob']:.2f}): most attended "
          f"joints " + ", ".join(f"{names[j]} x{e['joint_lift'][j]:.2f}" for j in top),
          flush=True)
  plot_summary(os.path.join(out, "summary.png"), lifts, names, classes)
  with open(os.path.join(out, "summary.json"), "w") as fh:
    json.dump({"checkpoint_step": int(step), "split": split, "joint_names": names,
               "mean_joint_lift": {classes[c]: np.mean(v, axis=0).tolist()
                                   for c, v in lifts.items()}}, fh, indent=1)
  print(f"step {step}: explained {len(positions)} clips of {split} -> {out}", flush=True)


if __name__ == "__main__":
  app.run(main)
