"""Explanations: the importance numbers, the PNGs, and launch/explain.py on a trained model."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deform3d import explain
from deform3d.models import attention_maps, build_model
from tests.test_fast_paths import random_params

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The tiny size (deform3d/models/model.py VARIANTS) made three blocks deep for 8 frames of 7 joints.
TINY = dict(variant="tiny", num_classes=3, depth=3, joint_window=3, joint_strides=(1, 2, 1),
            temporal_window=4, temporal_strides=(2, 1, 2))


def tiny_maps(rng, **overrides):
  model = build_model({**TINY, **overrides})
  frames = jnp.asarray(rng.standard_normal((2, 8, 32, 32, 3)), jnp.float32)
  keypoints = jnp.asarray(rng.uniform(-1, 1, (2, 8, 7, 3)), jnp.float32)
  # Random parameters of init's shapes, none at its initializer's value (no compilation of init).
  abstract = jax.eval_shape(model.init, jax.random.key(0), frames, keypoints)
  variables = {"params": random_params(abstract["params"], rng)}
  logits, maps = attention_maps(model, variables, frames, keypoints)
  return model, np.asarray(logits), jax.tree.map(np.asarray, maps), frames, keypoints


def test_uniform_share_counts_group_sizes():
  # 7 joints, window 3, stride 1: groups {0,1,2}, {3,4,5}, {6}: the cross token's uniform
  # attention gives 1/4 per joint in full groups and 1/2 to joint 6.
  share = explain.uniform_joint_share(7, 3, 1)
  expect = np.array([0.25] * 6 + [0.5])
  np.testing.assert_allclose(share, expect / expect.sum())
  # Stride 2 (blocks of 6): groups {0,2,4}, {1,3,5}, {6}.
  np.testing.assert_allclose(explain.uniform_joint_share(7, 3, 2), expect / expect.sum())


def test_token_frames_follow_the_temporal_merges():
  model = build_model({**TINY, "stem_temporal_stride": 2, "temporal_strides": (2, 1, 2)})
  assert explain.token_frames(model) == [2, 4, 4]


@pytest.mark.slow
def test_importance_numbers_are_distributions_over_the_clip(rng):
  model, logits, maps, _, _ = tiny_maps(rng)
  for index in range(2):
    j = explain.joint_importance(maps, model, index, blocks=[0, 1, 2])
    assert j["per_block"].shape == (3, 8, 7)
    np.testing.assert_allclose(j["per_block"].sum(-1), 1.0, rtol=1e-6)
    # Block 1 runs after a merge of 2 frames: frames covered by one token share its value.
    np.testing.assert_array_equal(j["per_block"][1, 0::2], j["per_block"][1, 1::2])
    assert np.ptp(j["per_block"][0]) > 0  # random weights: not uniform
    f = explain.frame_importance(maps, model, index, blocks=[0, 1, 2])
    np.testing.assert_allclose(f["per_block"].sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(f["mean"].sum(), 1.0, rtol=1e-6)
    points = explain.sampling_points(maps, model, index)
    assert [p["block"] for p in points] == [0, 1, 2]
    for p in points:
      assert p["points"].shape[0] == 2 and p["points"].shape[-1] == 3
      assert np.all(np.abs(p["points"]) <= 1.0)
      np.testing.assert_allclose(p["weight"].sum(), 1.0, rtol=1e-6)
  e = explain.explain_clip(maps, model, 1, logits=logits, class_names=["a", "b", "c"])
  assert e["blocks"] == [0]
  np.testing.assert_allclose(e["joint_importance"],
                             explain.joint_importance(maps, model, 1)["per_block"][0])
  assert abs(sum(p["prob"] for p in e["prediction"]) - 1.0) < 1e-6
  json.dumps(e)  # plain Python types only
  with pytest.raises(ValueError, match="blocks"):
    explain.joint_importance(maps, model, 0, blocks=[5])


def test_lift_finds_the_attended_joint():
  """Hand-made maps: the cross token puts 0.6 of its attention on joint 4 in every group that
  holds it; joint 4 then has the highest lift, and lift times share sums to 1."""
  model = build_model({**TINY, "depth": 1, "joint_strides": (1,), "temporal_strides": (1,)})
  imp = np.full((1, 8, 2, 7), 0.1 / 3)  # (B, T, heads, J): 3 groups
  imp[..., 4] = 0.6 / 3
  maps = {"block0/joint_attn/joint_importance": imp}
  j = explain.joint_importance(maps, model, 0)
  assert int(np.argmax(j["lift"])) == 4
  np.testing.assert_allclose((j["lift"] * j["uniform_share"]).sum(), 1.0, rtol=1e-6)
  assert j["lift"][4] > 1.5 and np.all(np.delete(j["lift"], 4) < 1.0)


def test_pngs_are_written(rng, tmp_path):
  import matplotlib.image
  model, logits, maps, frames, keypoints = tiny_maps(rng)
  e = explain.explain_clip(maps, model, 0, logits=logits)
  pixels = np.clip(np.asarray(frames[0]) * 40 + 128, 0, 255).astype(np.uint8)
  bones = [(0, 1), (1, 2), (2, 3), (3, 4), (4, 5), (5, 6)]
  paths = explain.save_all(str(tmp_path), "clip", pixels, np.asarray(keypoints[0]), e, bones)
  assert [os.path.basename(p) for p in paths] == ["clip_skeleton.png", "clip_heatmap.png",
                                                  "clip_points.png"]
  for p in paths:
    img = matplotlib.image.imread(p)
    assert img.shape[0] > 100 and img.shape[1] > 200
    assert img[..., :3].std() > 0.05  # not blank


@pytest.mark.heavy
def test_explain_command_on_a_briefly_trained_model(explained_model, tmp_path):
  """``launch/explain.py`` on the embedded config trained briefly (150 steps: the session's
  ``explained_model``, tests/conftest.py): the PNGs and JSON of 2 clips per class, and the
  faithfulness report, in which first-block attention agrees with the ground truth's moving
  joints better than chance (hit rate and AUC; margins below)."""
  from data_pipelines import embedded
  workdir, overrides = explained_model["workdir"], explained_model["overrides"]
  assert explained_model["steps"] == STEPS  # the model the margins were measured on

  out = str(tmp_path / "explain")
  proc = subprocess.run([sys.executable, "launch/explain.py", "--config", "configs/embedded.py",
                         "--workdir", workdir, "--num", "2", "--out", out] + overrides,
                        cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "explained 24 clips" in proc.stdout  # 2 of each of the 12 classes
  files = sorted(os.listdir(out))
  assert "summary.png" in files and "summary.json" in files
  clips = [f[:-5] for f in files if f.startswith("clip") and f.endswith(".json")]
  assert len(clips) == 24
  for c in clips:
    for suffix in ("_skeleton.png", "_heatmap.png", "_points.png"):
      assert c + suffix in files

  labels = []
  for c in clips:
    e = json.load(open(os.path.join(out, c + ".json")))
    assert e["blocks"] == [0]
    share, uniform = np.asarray(e["joint_share"]), np.asarray(e["joint_uniform_share"])
    assert share.shape == uniform.shape == (2 * 17,)  # two persons' joints
    assert abs(share.sum() - 1) < 1e-4 and abs(uniform.sum() - 1) < 1e-4
    labels.append(e["label_name"])
  assert sorted(set(labels)) == sorted(embedded.CLASSES) and len(labels) == 24
  # Not asserted: that the wave clips put more than their share on the waving forearm. At 150
  # steps (validation top-1 0.1-0.3) the ratio share / uniform share of the right elbow and
  # wrist, wave clips vs the others, was 1.13 vs 0.97, 1.30 vs 1.04 and 0.80 vs 0.76 for seeds
  # 0, 1, 2 (2026-11-30): seed 2 puts the wave clips below their share.

  # Faithfulness against the ground truth the build wrote (the moving joints of every clip), the
  # 60 clips in one batch (one program per method; the default batch of 50 compiles two).
  out = str(tmp_path / "faithfulness")
  proc = subprocess.run([sys.executable, "launch/explain.py", "--config", "configs/embedded.py",
                         "--workdir", workdir, "--faithfulness", "--methods", "attention,rollout",
                         "--ks", "3", "--batch", "60", "--out", out] + overrides,
                        cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.load(open(os.path.join(out, "faithfulness.json")))
  assert report["clips"] == 60 and set(report["methods"]) == {"attention", "rollout"}
  assert os.path.exists(os.path.join(out, "faithfulness.png"))
  att = report["methods"]["attention"]
  # Measured at 150 steps: see FAITH_MARGIN.
  assert att["hit_rate"] > att["chance"] + FAITH_MARGIN, att
  assert att["auc"] > 0.5 + AUC_MARGIN, att


STEPS = 150
# Measured (60 test clips, chance hit rate 0.280) for seeds 0, 1, 2 on 2026-11-30: first-block
# attention hit rate 0.442 / 0.465 / 0.366, AUC 0.653 / 0.661 / 0.540 (rollout AUC 0.707 /
# 0.659 / 0.492, so rollout is not asserted); an earlier machine's seed 0: 0.44 / 0.65. Half the
# smallest measured gap is asserted: hit rate 0.086 -> 0.04, AUC 0.040 -> 0.02.
FAITH_MARGIN = 0.04
AUC_MARGIN = 0.02


# --- Methods beside raw attention (deform3d/explain/methods.py) and their faithfulness scores ---

def tiny_two_person_model(rng, **options):
  """``(model, variables, frames, keypoints)``: the tiny model (with ``options``), two persons
  of 7 joints (the second absent in clip 1), random parameters."""
  model = build_model({**TINY, **options})
  frames = jnp.asarray(rng.standard_normal((2, 8, 32, 32, 3)), jnp.float32)
  kp = rng.uniform(-1, 1, (2, 2, 8, 7, 3)).astype(np.float32)
  kp[..., 2] = rng.uniform(0.5, 1.0, kp.shape[:-1])
  kp[1, 1] = 0.0
  abstract = jax.eval_shape(model.init, jax.random.key(0), frames, jnp.asarray(kp))
  return model, {"params": random_params(abstract["params"], rng)}, frames, kp


def tiny_two_person(rng):
  """``tiny_two_person_model`` with targets and its attention maps and their gradients."""
  from deform3d.explain import methods
  model, variables, frames, kp = tiny_two_person_model(rng)
  target = jnp.asarray([0, 2])
  logits, maps, grads, _ = methods.attention_grads(model, variables, frames, jnp.asarray(kp),
                                                   target)
  return model, variables, frames, kp, target, jax.tree.map(np.asarray, (maps, grads))


def loop_propagate(model, maps, kp, grads=None):
  """An independent, loop-by-loop form of ``methods.propagate``: one relevance vector per token,
  every attention applied entry by entry."""
  from deform3d.models.stride_attention import person_groups
  b_idx = 0
  persons, t0, j = kp.shape[1], kp.shape[2], kp.shape[3]
  pj, k = persons * j, model.num_cross_tokens
  present = [bool((kp[b_idx, m, ..., 2] > 0).any()) for m in range(persons)]
  ns_list, t = [], t0
  for i in range(model.depth):
    ns_list.append(maps[f"block{i}/cross_attn/attn"].shape[-1] - t * k)
    t = -(-t // model.temporal_strides[i])
  size = t0 * pj + t0 + sum(ns_list)
  point0 = [t0 * pj + t0 + sum(ns_list[:i]) for i in range(model.depth)]
  unit = lambda n: np.eye(size)[n]
  pose = [[unit(tt * pj + n) for n in range(pj)] for tt in range(t0)]
  cross = [[unit(t0 * pj + tt) for _ in range(k)] for tt in range(t0)]
  a_, b_ = (0.5, 0.5) if grads is None else (1.0, 1.0)

  def att(key, *index):
    a = np.asarray(maps[key][b_idx][index], np.float64)
    if grads is not None:
      a = np.maximum(a * np.asarray(grads[key][b_idx][index], np.float64), 0)
    return a

  t = t0
  for i in range(model.depth):
    a = att(f"block{i}/cross_attn/attn")                       # (heads, Q, Ns + TK)
    a = a.mean(0)[-t * k:]
    ns, flat = ns_list[i], [cross[tt][kk] for tt in range(t) for kk in range(k)]
    new = []
    for q in range(t * k):
      y = sum(a[q, ns + c] * flat[c] for c in range(t * k))
      y = y + np.concatenate([np.zeros(point0[i]), a[q, :ns], np.zeros(size - point0[i] - ns)])
      new.append(a_ * flat[q] + b_ * y)
    cross = [[new[tt * k + kk] for kk in range(k)] for tt in range(t)]
    idx = person_groups(j, min(model.joint_window, j), model.joint_strides[i], persons)
    ng = idx.shape[0]
    weight = [present[g // (ng // persons)] or not any(present) for g in range(ng)]
    for tt in range(t):
      z0 = sum(cross[tt]) / k
      outs, new_pose = [], list(pose[tt])
      for g in range(ng):
        a = att(f"block{i}/joint_attn/attn", tt, g).mean(0)    # (1 + w, 1 + w)
        toks = [z0] + [pose[tt][n] if n >= 0 else np.zeros(size) for n in idx[g]]
        ys = [sum(a[q, c] * toks[c] for c in range(len(toks))) for q in range(len(toks))]
        if weight[g]:
          outs.append(ys[0])
        for s, n in enumerate(idx[g]):
          if n >= 0:
            new_pose[n] = a_ * pose[tt][n] + b_ * ys[s + 1]
      y_cross = sum(outs) / max(len(outs), 1)
      cross[tt] = [a_ * c + b_ * y_cross for c in cross[tt]]
      pose[tt] = new_pose
    tokens = [cross[tt] + pose[tt] for tt in range(t)]
    a_t = att(f"block{i}/temporal_attn/attn")                  # (N, nw, heads, w, w)
    w = a_t.shape[-1]
    new = [[None] * len(tokens[0]) for _ in range(t)]
    for n in range(len(tokens[0])):
      for tt in range(t):
        v, q = divmod(tt, w)
        m = a_t[n, v].mean(0)
        y = sum(m[q, c] * tokens[v * w + c][n] for c in range(w) if v * w + c < t)
        new[tt][n] = a_ * tokens[tt][n] + b_ * y
    s = model.temporal_strides[i]
    t2 = -(-t // s)
    tokens = [[sum(new[min(t3 * s + r, t - 1)][n] for r in range(s)) / s
               for n in range(len(new[0]))] for t3 in range(t2)]
    t = t2
    cross, pose = [tok[:k] for tok in tokens], [tok[k:] for tok in tokens]
  return sum(c for row in cross for c in row) / (t * k)


@pytest.mark.slow
@pytest.mark.parametrize("weighted", [False, True])
def test_rollout_matches_a_loop_by_loop_reference_and_conserves_relevance(rng, weighted):
  from deform3d.explain import methods
  model, variables, frames, kp, target, (maps, grads) = tiny_two_person(rng)
  out = methods.propagate(model, maps, kp, grads if weighted else None)
  ref = loop_propagate(model, maps, kp, grads if weighted else None)
  t0, pj = kp.shape[2], kp.shape[1] * kp.shape[3]
  got = np.concatenate([out["joints"][0].ravel(), out["cross"][0]] +
                       [p[0] for p in out["points"]])
  np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-12)
  assert out["joints"].shape == (2, 8, 14) and got.shape == (t0 * pj + t0 + sum(
      p.shape[1] for p in out["points"]),)
  if not weighted:  # row-stochastic attention and (R + A R) / 2: the relevance sums to 1
    total = out["joints"].sum((1, 2)) + out["cross"].sum(1) + sum(p.sum(1) for p in out["points"])
    np.testing.assert_allclose(total, 1.0, rtol=1e-6)  # float32 softmax rows
  assert np.ptp(out["joints"][0]) > 0
  assert np.all(out["joints"][1, :, 7:] == 0)  # clip 1's absent second person


@pytest.mark.slow
def test_attention_gradients_match_finite_differences(rng):
  """The gradient with respect to a sown attention map (a perturbation added after its softmax)
  against central differences of the target logit along a random direction, for every map."""
  import flax.linen as nn
  from deform3d.explain import methods
  from deform3d.models.layers import MultiHeadAttention
  model, variables, frames, kp, target, (maps, grads) = tiny_two_person(rng)
  plain = methods.plain(model)

  def logit(key, delta):
    def add(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      if (isinstance(context.module, MultiHeadAttention) and context.method_name == "softmax"
          and "/".join(context.module.path) == key):
        out = out + delta
      return out
    with nn.intercept_methods(add):
      logits = plain.apply(variables, frames, jnp.asarray(kp), train=False)
    return float(np.asarray(logits, np.float64)[[0, 1], np.asarray(target)].sum())

  assert sorted(grads) == sorted(maps) and len(maps) == 9  # 3 attentions in each of 3 blocks
  for key in maps:
    # A relative perturbation of every weight (the maps hold weights of 1e-3 to 1).
    direction = (rng.standard_normal(maps[key].shape) * maps[key]).astype(np.float32)
    eps = 1e-2
    fd = (logit(key, eps * direction) - logit(key, -eps * direction)) / (2 * eps)
    ad = float((np.asarray(grads[key], np.float64) * direction).sum())
    assert abs(fd - ad) <= 2e-2 * max(abs(ad), 1e-3), (key, fd, ad)


@pytest.mark.slow
def test_integrated_gradients_are_complete(rng):
  """Attributions of frames and keypoints sum to logit(clip) - logit(motionless baseline), up to
  the path integral's discretization, which shrinks with the steps (the trilinear sampler's
  kinks make it converge slowly: measured 7% at 128 steps, 0.1-1.5% at 512)."""
  from deform3d.explain import methods
  model, variables, frames, kp, target, _ = tiny_two_person(rng)
  err = {}
  for steps in (32, 512):
    out = methods.explain_batch("integrated_gradients", model, variables, frames, kp, target,
                                steps=steps)
    gap = out["logit_gap"]
    assert np.all(np.abs(gap) > 1e-3)
    err[steps] = np.abs(out["attribution_sum"] - gap) / np.abs(gap)
  assert np.all(err[512] < 0.03), err
  assert err[512].max() < err[32].max() / 4, err
  assert out["joints"].shape == (2, 8, 14) and out["frames"].shape == (2, 8)
  assert np.all(out["joints"][1, :, 7:] == 0)  # absent person: no coordinates, no attribution
  base_f, base_k = methods.motionless(frames, jnp.asarray(kp))
  np.testing.assert_allclose(np.ptp(np.asarray(base_f), axis=1), 0, atol=1e-6)
  seen = kp[..., 2] > 0
  assert np.all(np.ptp(np.where(seen[..., None], np.asarray(base_k)[..., :2], 0), axis=2) < 1e-6)


@pytest.mark.slow
def test_integrated_gradients_are_finite_with_the_default_pose_options(rng):
  """The embedded default's model options (``pose_norm``, ``cross_rgb_scale=0``): a clip whose
  second person is absent has finite attributions (a NaN there once spoiled the completeness
  check of every one-person clip)."""
  from deform3d.explain import methods
  model, variables, frames, kp = tiny_two_person_model(
      rng, pose_norm=True, cross_rgb_scale=0.0, drop_path=0.0)
  out = methods.explain_batch("integrated_gradients", model, variables, frames, kp,
                              jnp.asarray([0, 2]), steps=4)
  assert np.isfinite(out["attribution_sum"]).all() and np.isfinite(out["joints"]).all()
  assert np.all(out["joints"][1, :, 7:] == 0)


def test_faithfulness_metrics_on_hand_made_scores(rng):
  from deform3d.explain import faithfulness as fm
  scores = np.array([[5.0, 4.0, 3.0, 2.0, 1.0, 0.0]])
  valid = np.array([[True] * 5 + [False]])
  moving = np.array([[True, False, True, False, False, True]])  # joint 5 is not valid
  s = fm.joint_scores(scores[:, None], valid)
  agr = fm.agreement(s, moving, valid)
  # Two moving valid joints (0, 2); the top 2 are 0 and 1: hit rate 1/2, chance 2/5.
  assert agr["hit_rate"][0] == 0.5 and agr["chance"][0] == 0.4
  # Pairs (moving, still) among valid: 0 beats 1, 3, 4; 2 beats 3, 4 but not 1: 5 of 6.
  assert abs(agr["auc"][0] - 5 / 6) < 1e-12
  # Brute-force AUC with ties on random scores.
  x = rng.integers(0, 4, 40).astype(float)
  y = rng.random(40) < 0.4
  pairs = [(1.0 if a > b else 0.5 if a == b else 0.0) for a in x[y] for b in x[~y]]
  assert abs(fm.auc(x, y) - np.mean(pairs)) < 1e-12
  assert fm.top_k(s, 2).tolist() == [[0, 1]]
  picks = fm.random_k(np.repeat(valid, 50, axis=0), 3, rng)
  assert picks.shape == (50, 3) and picks.max() < 5
  assert all(len(set(r)) == 3 for r in picks.tolist())
  kp = rng.uniform(0.1, 1, (2, 2, 4, 3, 3))
  out = fm.delete_joints(kp, np.array([[4], [0]]))               # person 2 joint 1; person 1 joint 0
  assert np.all(out[0, 1, :, 1] == 0) and np.all(out[1, 0, :, 0] == 0)
  assert (out != 0).sum() == kp.size - 2 * 4 * 3
  d = fm.deletion_summary(np.array([0, 1]), np.array([[2.0, 0.0], [0.0, 2.0]]),
                          np.array([[2.0, 0.0], [2.0, 0.0]]))
  assert d["accuracy_drop"] == 0.5 and d["prob_drop"] > 0.3



def test_flag_metrics_follow_the_eval_clip_and_count_what_lies_on_the_flag():
  from deform3d.explain import faithfulness as fm
  tf = pytest.importorskip("tensorflow")
  from data_pipelines import input_pipeline
  for available, frames in ((32, 8), (30, 8), (5, 8)):
    ref = input_pipeline.frame_indices(available, frames, tf.fill([frames], 0.5)).numpy()
    np.testing.assert_array_equal(fm.eval_frame_indices(available, frames), ref)
  # A flag at raw pixel (x, y) = (10 + frame, 20) of 32 frames, 40 x 56 (H x W) frames: the eval
  # crop is the centre 40 x 40 square (x offset 8); frame indices 2, 6, ..., 30.
  xy = np.stack([10 + np.arange(32), np.full(32, 20)], -1)
  track = fm.flag_track(xy, (40, 56), 8)
  idx = np.arange(8) * 4 + 2
  np.testing.assert_allclose(track[:, 0], (2 * (10 + idx - 8) + 1) / 40 - 1)
  np.testing.assert_allclose(track[:, 1], (2 * 20 + 1) / 40 - 1)
  # Pixels: all attribution in the pixel under the flag -> share 1; uniform -> share = chance.
  flag = np.zeros((2, 2))
  attr = np.zeros((2, 10, 10))
  attr[:, 4, 4] = 1.0  # centre (-0.1, -0.1), within 0.15 of (0, 0)
  share, chance = fm.pixel_flag_share(attr, flag, 0.15)
  assert share == 1.0 and abs(chance - 4 / 100) < 1e-12  # the 4 centre pixels are within 0.15
  share, chance = fm.pixel_flag_share(np.ones((2, 10, 10)), flag, 0.15)
  assert abs(share - chance) < 1e-12
  # Points: the flag moves between the two frames; the point at t = -0.5 (frame 0) is near it
  # only if it is near frame 0's flag.
  flag = np.array([[0.5, 0.5], [-0.5, -0.5]])
  points = np.array([[0.5, 0.5, -0.5], [0.5, 0.5, 0.5], [-0.5, -0.5, 0.5], [0.0, 0.0, 0.0]])
  share, chance = fm.point_flag_share(points, np.array([3.0, 1.0, 0.5, 0.5]), flag, 0.1)
  assert chance == 0.5 and abs(share - 3.5 / 5) < 1e-12


def test_top_predictions_are_the_most_probable_classes():
  logits = np.array([0.5, 3.0, -1.0, 2.0])
  top = explain.top_predictions(logits, ["a", "b", "c", "d"], k=3)
  assert [p["name"] for p in top] == ["b", "d", "a"] and [p["class"] for p in top] == [1, 3, 0]
  probs = np.exp(logits) / np.exp(logits).sum()
  np.testing.assert_allclose([p["prob"] for p in top], probs[[1, 3, 0]], rtol=1e-12)
  assert explain.top_predictions(logits)[0]["name"] == "1"  # no class names: the index


def _report(acc, hits, aucs, drops, random_drop):
  """A hand-made ``--faithfulness`` report: methods a, b with the given hit rates and AUCs."""
  return {"ks": [1, 3], "accuracy": acc, "random": {"deletion": {
      "1": {"prob_drop": random_drop}, "3": {"prob_drop": 2 * random_drop}}},
          "methods": {m: {"hit_rate": h, "chance": 0.25, "auc": a, "deletion": {
              "1": {"prob_drop": d}, "3": {"prob_drop": 2 * d}}}
                      for m, h, a, d in zip("ab", hits, aucs, drops)}}


def test_faithfulness_over_runs_gives_each_median_and_range_and_each_runs_ranking(tmp_path):
  from deform3d.explain import faithfulness as fm
  reports = [_report(0.9, (0.6, 0.4), (0.7, 0.8), (0.3, 0.1), 0.05),
             _report(1.0, (0.2, 0.5), (0.6, 0.9), (0.1, 0.2), 0.07),
             _report(0.95, (0.5, 0.3), (0.9, 0.5), (0.2, 0.4), 0.06)]
  s = fm.over_runs(reports)
  assert s["runs"] == 3 and s["accuracy"] == {"median": 0.95, "min": 0.9, "max": 1.0, "runs": 3}
  assert s["methods"]["a"]["hit_rate"] == {"median": 0.5, "min": 0.2, "max": 0.6, "runs": 3}
  assert s["methods"]["b"]["auc"]["median"] == 0.8
  assert s["methods"]["b"]["prob_drop"][3] == {"median": 0.4, "min": 0.2, "max": 0.8, "runs": 3}
  assert s["random"][1]["median"] == 0.06
  # The ranking can flip between models: by hit rate a, b, a; by AUC b, b, a.
  assert s["ranks"]["hit_rate"] == [["a", "b"], ["b", "a"], ["a", "b"]]
  assert s["ranks"]["auc"] == [["b", "a"], ["b", "a"], ["a", "b"]]
  bad = _report(0.9, (0.6, 0.4), (0.7, 0.8), (0.3, 0.1), 0.05)
  del bad["methods"]["b"]
  with pytest.raises(ValueError, match="report 1: methods"):
    fm.over_runs([reports[0], bad])
  # The command line: a report per model (a directory or the JSON), a table and the rankings.
  paths = []
  for i, r in enumerate(reports):
    os.makedirs(tmp_path / str(i))
    paths.append(str(tmp_path / str(i) / "faithfulness.json"))
    json.dump(r, open(paths[-1], "w"))
  proc = subprocess.run([sys.executable, "launch/summarize_faithfulness.py", str(tmp_path / "0"),
                         paths[1], paths[2], "--json", str(tmp_path / "s.json")], cwd=ROOT,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "| a | 0.500 (0.200-0.600) (0.250) | 0.700 (0.600-0.900) |" in proc.stdout
  assert "by hit_rate: b > a" in proc.stdout
  assert json.load(open(tmp_path / "s.json"))["ranks"]["auc"][2] == ["a", "b"]
