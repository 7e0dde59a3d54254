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
_OUT = flags.DEFINE_string("out", None, "Output directory (default: WORKDIR/explain_SPLIT, "
                           "explain_SPLIT_METHOD for other methods than attention).")
_METHOD = flags.DEFINE_enum("method", "attention", ["attention", "rollout", "grad_attention",
                                                    "integrated_gradients"],
                            "How joint importance is computed (deform3d/explain/methods.py); "
                            "every PNG names it.")
_STEPS = flags.DEFINE_integer("steps", 16, "Integrated gradients: path steps.")
_FAITHFULNESS = flags.DEFINE_bool("faithfulness", False, "Instead of PNGs: score every method "
                                  "on the split against the ground truth (embedded dataset) and "
                                  "by deleting its top-k joints vs k random ones; writes "
                                  "faithfulness.json/.png/.md to --out.")
_METHODS = flags.DEFINE_list("methods", None, "--faithfulness: the methods (default: all).")
_KS = flags.DEFINE_list("ks", ["1", "3", "5"], "--faithfulness: joints deleted.")
_MAX_CLIPS = flags.DEFINE_integer("max_clips", None, "--faithfulness: the first N clips only.")
_BATCH = flags.DEFINE_integer("batch", 50, "--faithfulness: clips per model call.")


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
  return frames, keypoints, labels, ids, input_pipeline.to_uint8(frames)


def plot_summary(path, lifts, joint_names, classes, method="attention"):
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
  what = ("joint lift over uniform attention" if method == "attention" else
          f"[{method}] joint importance over uniform")
  ax.set_title(f"{what}, mean over explained clips (1 = chance)", fontsize=9)
  fig.colorbar(im, ax=ax, fraction=0.03)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _batched(fn, n, batch, label):
  """Calls ``fn(slice)`` over ``n`` clips in batches, printing progress; concatenates dicts."""
  import time
  import numpy as np
  start, parts = time.time(), []
  for i in range(0, n, batch):
    parts.append(fn(slice(i, min(i + batch, n))))
    done = min(i + batch, n)
    rate = done / max(time.time() - start, 1e-9)
    print(f"  {label}: {done}/{n} clips | {rate:.1f} clips/s | ETA {(n - done) / rate:.0f}s",
          flush=True)
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]
          if isinstance(parts[0][k], np.ndarray)}


def run_faithfulness(config, model, params, split, classes, step, out):
  """``--faithfulness``: every method's agreement with the ground truth and deletion test."""
  import jax
  import numpy as np
  from data_pipelines import embedded, input_pipeline
  from deform3d.explain import faithfulness as fm
  from deform3d.explain import methods as em
  from deform3d.models.stride_attention import persons_present

  if config.dataset.name != "embedded":
    raise SystemExit("--faithfulness needs ground truth, which only the embedded dataset has "
                     f"(config.dataset.name={config.dataset.name!r})")
  try:
    truth = embedded.read_ground_truth(config.dataset.data_dir, split)
  except FileNotFoundError as e:
    raise SystemExit(str(e))
  n = len(input_pipeline.eval_labels(config.dataset.data_dir, split))
  n = n if _MAX_CLIPS.value is None else min(n, _MAX_CLIPS.value)
  frames, keypoints, labels, ids, _ = load_clips(config, split, list(range(n)))
  kp5 = keypoints if keypoints.ndim == 5 else keypoints[:, None]
  persons, joints = kp5.shape[1], kp5.shape[3]
  valid = np.repeat(persons_present(kp5), joints, axis=1)                 # (N, P * J)
  moving = np.zeros_like(valid)
  for i, clip_id in enumerate(ids):
    for m, js in enumerate(truth[clip_id]["moving"][:persons]):
      moving[i, m * joints + np.asarray(js, int)] = True
  variables = {"params": params}
  apply = jax.jit(lambda f, k: model.apply(variables, f, k, train=False))
  batch = _BATCH.value
  logits_of = lambda kp: _batched(lambda s: {"logits": np.asarray(apply(frames[s], kp[s]))}, n,
                                  batch, "classify")["logits"]
  base = logits_of(keypoints)
  ks = [int(k) for k in _KS.value]
  rng = np.random.default_rng(0)
  report = {"checkpoint_step": int(step), "split": split, "clips": n, "ks": ks,
            "accuracy": float((base.argmax(-1) == labels).mean()), "methods": {}}
  random_rows = {}
  for k in ks:  # three random draws per clip, averaged
    draws = [fm.deletion_summary(labels, base, logits_of(fm.delete_joints(
        keypoints, fm.random_k(valid, k, rng)))) for _ in range(3)]
    random_rows[k] = {key: float(np.mean([d[key] for d in draws])) for key in draws[0]}
  report["random"] = {"deletion": {str(k): v for k, v in random_rows.items()}}
  for method in _METHODS.value or em.METHODS:
    print(f"{method}:", flush=True)
    res = _batched(lambda s: em.explain_batch(method, model, variables, frames[s], keypoints[s],
                                              labels[s], steps=_STEPS.value), n,
                   max(1, batch // 2) if method != "attention" else batch, method)
    imp = res["joints"]
    scores = fm.joint_scores(imp, valid)
    agr = fm.agreement(scores, moving, valid)
    per_class = {classes[c]: {"hit_rate": fm.summarize(agr["hit_rate"][labels == c]),
                              "auc": fm.summarize(agr["auc"][labels == c])}
                 for c in sorted(set(labels.tolist()))}
    deletion = {str(k): fm.deletion_summary(labels, base, logits_of(fm.delete_joints(
        keypoints, fm.top_k(scores, k)))) for k in ks}
    report["methods"][method] = {
        "hit_rate": fm.summarize(agr["hit_rate"]), "chance": fm.summarize(agr["chance"]),
        "auc": fm.summarize(agr["auc"]), "per_class": per_class, "deletion": deletion}
    r = report["methods"][method]
    flag = flag_scores(res, ids, truth, frames.shape[1])
    if flag:
      r["flag"] = flag
    if "logit_gap" in res:  # integrated gradients: how far the attributions are from complete
      rel = np.abs(res["attribution_sum"] - res["logit_gap"]) / np.maximum(
          np.abs(res["logit_gap"]), 1e-6)
      r["steps"] = _STEPS.value
      r["completeness_error_median"] = float(np.median(rel))
    print(f"{method}: hit rate {r['hit_rate']:.3f} (chance {r['chance']:.3f}), AUC "
          f"{r['auc']:.3f}; deleting top-k, true-class prob drop " + ", ".join(
              f"k={k} {deletion[str(k)]['prob_drop']:.3f} (random "
              f"{random_rows[k]['prob_drop']:.3f})" for k in ks), flush=True)
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "faithfulness.json"), "w") as fh:
    json.dump(report, fh, indent=1)
  with open(os.path.join(out, "faithfulness.md"), "w") as fh:
    fh.write(faithfulness_table(report))
  plot_faithfulness(os.path.join(out, "faithfulness.png"), report)
  print(faithfulness_table(report), flush=True)
  print(f"step {step}: faithfulness of {len(report['methods'])} methods on {n} clips of "
        f"{split} -> {out}", flush=True)
  return report


FLAG_RADIUS = 0.15  # normalized units: the flag's disc (0.11) and a margin, 3.6 px at 48 px


def flag_scores(res, ids, truth, num_frames) -> dict:
  """The RGB side: how much of a method's pixel attribution (``pixels``) and sampling-point
  weight (``point_xyz``/``point_weight``) lies on the flag, in the clips whose flag is the class
  (``cue``) and in those where it is a distractor, against the chance share."""
  import numpy as np
  from deform3d.explain import faithfulness as fm
  out = {}
  share_of = {"pixels": lambda i, track: fm.pixel_flag_share(res["pixels"][i], track,
                                                             FLAG_RADIUS),
              "points": lambda i, track: fm.point_flag_share(
                  res["point_xyz"][i], res["point_weight"][i], track, FLAG_RADIUS)}
  needs = {"pixels": "pixels", "points": "point_xyz"}  # the result key each kind reads
  for kind, fn in share_of.items():
    if needs[kind] not in res:
      continue
    rows = {"cue": [], "distractor": []}
    for i, clip_id in enumerate(ids):
      flag = truth[clip_id]["flag"]
      if flag is None:
        continue
      track = fm.flag_track(flag["xy"], truth[clip_id]["frame_size"], num_frames)
      rows["cue" if flag["cue"] else "distractor"].append(fn(i, track))
    out[kind] = {}
    for name, vals in rows.items():
      if vals:
        share, chance = (float(np.nanmean(v)) for v in zip(*vals))
        out[kind][name] = {"clips": len(vals), "share": share, "chance": chance,
                           "lift": share / chance if chance > 0 else float("nan")}
  return out


def faithfulness_table(report) -> str:
  """The Markdown table of docs/explain.md from a ``faithfulness.json`` report."""
  ks = report["ks"]
  head = ("| method | hit rate (chance) | AUC | " + " | ".join(
      f"prob drop, top-{k} (random)" for k in ks) + f" | accuracy drop, top-{ks[-1]} (random) |")
  lines = [head, "|" + " --- |" * (4 + len(ks))]
  rnd = report["random"]["deletion"]
  for name, r in report["methods"].items():
    d = r["deletion"]
    lines.append(f"| {name} | {r['hit_rate']:.3f} ({r['chance']:.3f}) | {r['auc']:.3f} | " +
                 " | ".join(f"{d[str(k)]['prob_drop']:.3f} ({rnd[str(k)]['prob_drop']:.3f})"
                            for k in ks) +
                 f" | {d[str(ks[-1])]['accuracy_drop']:.3f} "
                 f"({rnd[str(ks[-1])]['accuracy_drop']:.3f}) |")
  flag_lines = []
  for name, r in report["methods"].items():
    for kind, rows in r.get("flag", {}).items():
      cells = [f"{rows[c]['share']:.3f} ({rows[c]['chance']:.3f}, x{rows[c]['lift']:.2f})"
               if c in rows else "-" for c in ("cue", "distractor")]
      flag_lines.append(f"| {name} | {kind} | " + " | ".join(cells) + " |")
  if flag_lines:
    lines += ["", "| method | RGB importance | share on the flag, cue clips (chance, lift) | "
              "distractor clips |", "| --- | --- | --- | --- |"] + flag_lines
  return "\n".join(lines) + "\n"


def plot_faithfulness(path, report):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np
  names = list(report["methods"])
  ks = report["ks"]
  fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.8))
  x = np.arange(len(names))
  a1.bar(x - 0.2, [report["methods"][m]["hit_rate"] for m in names], 0.4, label="hit rate")
  a1.bar(x + 0.2, [report["methods"][m]["auc"] for m in names], 0.4, label="AUC")
  a1.axhline(0.5, color="black", lw=0.8, ls="--", label="AUC chance")
  a1.plot(x - 0.2, [report["methods"][m]["chance"] for m in names], "k_", ms=20,
          label="hit-rate chance")
  a1.set_xticks(x)
  a1.set_xticklabels(names, fontsize=8)
  a1.set_ylim(0, 1)
  a1.set_title("agreement with the moving joints (ground truth)", fontsize=9)
  a1.legend(fontsize=7)
  for m in names:
    a2.plot(ks, [report["methods"][m]["deletion"][str(k)]["prob_drop"] for k in ks], "o-",
            label=m)
  a2.plot(ks, [report["random"]["deletion"][str(k)]["prob_drop"] for k in ks], "k--o",
          label="random joints")
  a2.set_xlabel("joints deleted (k)")
  a2.set_ylabel("true-class probability drop")
  a2.set_title("deletion test", fontsize=9)
  a2.legend(fontsize=7)
  fig.suptitle(f"explanation faithfulness: step {report['checkpoint_step']}, "
               f"{report['clips']} clips of {report['split']}", fontsize=10)
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
  from deform3d.train import trainer

  config = _CONFIG.value
  split = _SPLIT.value or ("test" if config.dataset.name == "embedded"
                           else config.dataset.eval_split)
  classes = list(read_classes(config.dataset.data_dir))
  try:
    tr, state, step = trainer.load_trained(config, _WORKDIR.value, loaders.input_shapes(config),
                                           _STEP.value)
  except FileNotFoundError as e:
    raise SystemExit(str(e))
  params = jax.device_get(state.params)
  method = _METHOD.value
  if _FAITHFULNESS.value:
    run_faithfulness(config, tr.model, params, split, classes, step,
                     _OUT.value or os.path.join(_WORKDIR.value, f"faithfulness_{split}"))
    return

  try:
    positions = select(input_pipeline.eval_labels(config.dataset.data_dir, split), classes,
                       [int(c) for c in _CLIPS.value] if _CLIPS.value else None,
                       _CLASS.value, _NUM.value)
  except ValueError as e:
    raise SystemExit(f"{config.dataset.data_dir} split {split!r}: {e}")
  frames, keypoints, labels, ids, pixels = load_clips(config, split, positions)
  layout = config.dataset.joint_layout
  out = _OUT.value or os.path.join(
      _WORKDIR.value, f"explain_{split}" + ("" if method == "attention" else f"_{method}"))
  stems = [f"clip{pos:05d}" for pos in positions]
  explanations, names = explain.write_explanations(
      out, tr.model, params, frames, keypoints, pixels, stems=stems,
      captions=[f"{ids[i]}: true {classes[labels[i]]}" for i in range(len(positions))],
      joint_names=LAYOUTS[layout], bones=BONES[layout], class_names=classes, method=method,
      blocks=[int(b) for b in _BLOCKS.value] if _BLOCKS.value else None, steps=_STEPS.value,
      extra=[dict(clip=pos, id=ids[i], label=int(labels[i]), label_name=classes[labels[i]],
                  checkpoint_step=int(step), split=split) for i, pos in enumerate(positions)])
  lifts = {}
  for i, (stem, e) in enumerate(zip(stems, explanations)):
    lifts.setdefault(int(labels[i]), []).append(e["joint_lift"])
    top = np.argsort(e["joint_lift"])[::-1][:3]
    pred = e["prediction"][0]
    print(f"{stem} ({classes[labels[i]]} -> {pred['name']} {pred['prob']:.2f}): "
          f"{'most attended' if method == 'attention' else f'most important ({method})'} "
          f"joints " + ", ".join(f"{names[j]} x{e['joint_lift'][j]:.2f}" for j in top),
          flush=True)
  plot_summary(os.path.join(out, "summary.png"), lifts, names, classes, method)
  with open(os.path.join(out, "summary.json"), "w") as fh:
    json.dump({"checkpoint_step": int(step), "split": split, "joint_names": names,
               "method": method,
               "mean_joint_lift": {classes[c]: np.mean(v, axis=0).tolist()
                                   for c, v in lifts.items()}}, fh, indent=1)
  print(f"step {step}: explained {len(positions)} clips of {split} -> {out}", flush=True)


if __name__ == "__main__":
  from deform3d import host_malloc
  host_malloc.maybe_reexec()  # with DEFORM3D_HOST_MALLOC=1 (docs/performance.md)
  app.run(main)
