"""The PyTorch reference model of the benchmark computes what the Flax model computes."""

import jax
import numpy as np
import optax
import pytest

torch = pytest.importorskip("torch")

from benchmarks import torch_reference  # noqa: E402
from deform3d.models import build_model, joint_groups  # noqa: E402
from tests.test_fast_paths import random_params  # noqa: E402

# (model config, frames, joints, persons): sizes from deform3d/models/model.py VARIANTS.
CONFIGS = [
    # The embedded config's model (the paper's block, one cross-modal token).
    (dict(variant="embedded", num_classes=10, drop_path=0.0), 8, 17, 1),
    # Temporal stem stride, a partial joint group, odd offset strides (edge padding), merges,
    # two cross-modal tokens, and the RGB stream kept at full temporal length.
    (dict(variant="tiny", num_classes=5, depth=3, num_heads=4, stem_temporal_stride=2,
          joint_window=5, joint_strides=(1, 2, 1), temporal_strides=(1, 2, 1),
          offset_strides=(2, 3, 3), drop_path=0.0, rgb_merge=False, num_cross_tokens=2), 6, 13, 1),
    # The earlier design (ablation).
    (dict(variant="embedded", num_classes=10, drop_path=0.0, design="pooled"), 8, 17, 1),
    # RGB queries' bias positions at their frame's centre (ablation).
    (dict(variant="tiny", num_classes=4, joint_window=3, rgb_query_pos="frame", drop_path=0.0),
     4, 5, 1),
    # Pose-only, and RGB-only.
    (dict(variant="tiny", num_classes=4, joint_window=3, use_rgb=False, drop_path=0.0), 4, 5, 1),
    (dict(variant="tiny", num_classes=4, joint_window=3, use_pose=False, drop_path=0.0), 4, 5, 1),
    # Three persons (person embedding, groups per person); one clip with only the first, one
    # with nobody.
    (dict(variant="tiny", num_classes=4, joint_window=3, joint_strides=(2, 1), drop_path=0.0),
     4, 7, 3),
    # Pose features in body-size units with LayerNormed tokens, and the RGB -> cross gate as
    # the only LayerScale (the embedded recipe's options), two persons.
    (dict(variant="tiny", num_classes=4, joint_window=3, pose_norm=True, cross_rgb_scale=0.0,
          layer_scale=0.0, drop_path=0.0), 4, 7, 2),
]


@pytest.mark.parametrize("num_joints,window,stride", [(17, 4, 1), (17, 4, 2), (13, 5, 2),
                                                      (25, 5, 2), (5, 3, 2), (3, 4, 1)])
def test_joint_groups_are_the_same_table(num_joints, window, stride):
  np.testing.assert_array_equal(torch_reference.joint_groups(num_joints, window, stride),
                                joint_groups(num_joints, window, stride))


@pytest.mark.slow
@pytest.mark.parametrize("overrides,t,j,persons", CONFIGS)
def test_same_logits_and_gradients_as_flax(rng, overrides, t, j, persons):
  model = build_model(overrides)
  b = 3
  frames = rng.standard_normal((b, t, 48, 48, 3)).astype(np.float32)
  shape = (b, t, j, 3) if persons == 1 else (b, persons, t, j, 3)
  keypoints = rng.uniform(-1, 1, shape).astype(np.float32)
  keypoints[..., 2] = np.where(rng.random(shape[:-1]) < 0.1, 0.0, np.abs(keypoints[..., 2]))
  if persons > 1:
    keypoints[1, 1:, ..., 2] = 0.0  # clip 1: only its first person is present
    keypoints[2, ..., 2] = 0.0      # clip 2: nobody
  labels = rng.integers(0, model.num_classes, b)
  # Parameters of init's shapes, every one away from its initializer (zero-initialized ones,
  # such as the offsets and the head, would hide mistakes); drawn, so init is not compiled.
  params = random_params(jax.eval_shape(model.init, jax.random.key(0), frames,
                                        keypoints)["params"], rng)
  leaves = jax.tree.leaves(params)

  def loss_fn(p):
    logits = model.apply({"params": p}, frames, keypoints, train=True)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), logits

  (_, logits), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params)
  logits = np.asarray(logits)
  # Both forms of the reference (plain, and with fast.py's rewrites) against the Flax model.
  for fast in (False, True):
    cfg = dict(torch_reference.model_fields(model), fast=fast)
    check_torch_against_flax(model, params, leaves, grads, logits, frames, keypoints, labels, cfg)


def check_torch_against_flax(model, params, leaves, grads, logits, frames, keypoints, labels,
                             cfg):
  tp = torch_reference.params_from_flax(params, requires_grad=True)
  t_logits = torch_reference.forward(tp, torch.tensor(frames), torch.tensor(keypoints), cfg,
                                     train=True)
  torch.nn.functional.cross_entropy(t_logits, torch.tensor(labels)).backward()

  rel = np.abs(t_logits.detach().numpy() - logits).max() / np.abs(logits).max()
  assert rel < 1e-5, (cfg["fast"], rel)
  flat = jax.tree_util.tree_flatten_with_path(grads)[0]
  scale = max(float(np.abs(np.asarray(g)).max()) for _, g in flat)
  checked = 0
  for path, g in flat:
    node = tp
    for key in path:
      node = node[key.key]
    ref = np.asarray(g)
    # Leaves whose true gradient is 0 (e.g. a bias shared by all keys of a softmax) are
    # compared against the overall gradient scale instead of their own rounding noise. The
    # fast Flax model adds and subtracts rpb_fc1's bias (it cancels); in float32 that leaves
    # cancellation error of up to 2e-4 of that leaf's gradient (measured), hence 1e-3.
    denom = max(float(np.abs(ref).max()), 1e-3 * scale)
    if node.grad is None:  # not reached by the loss in torch: the last block's RGB update
      assert f"block{model.depth - 1}" in jax.tree_util.keystr(path) and "rgb" in \
          jax.tree_util.keystr(path), jax.tree_util.keystr(path)
      assert np.all(ref == 0), jax.tree_util.keystr(path)
      checked += 1
      continue
    err = np.abs(node.grad.numpy() - ref).max() / denom
    assert err < 1e-3, (cfg["fast"], jax.tree_util.keystr(path), err)
    checked += 1
  assert checked == len(leaves)


def test_rejects_dropout():
  model = build_model({**CONFIGS[4][0], "dropout": 0.1})
  abstract = jax.eval_shape(model.init, jax.random.key(0), np.zeros((1, 4, 48, 48, 3), np.float32),
                            np.zeros((1, 4, 5, 3), np.float32))["params"]
  params = torch_reference.params_from_flax(random_params(abstract, np.random.default_rng(0)))
  with pytest.raises(ValueError, match="dropout"):
    torch_reference.forward(params, torch.zeros(1, 4, 48, 48, 3), torch.zeros(1, 4, 5, 3),
                            torch_reference.model_fields(model))
