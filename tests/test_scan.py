"""Blocks scanned in stages (``model.scan``): the same function as the loop over ``block{i}``,
the layouts' conversions, and checkpoints restored across layouts."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deform3d.models import build_model, convert
from deform3d.models.layers import DropPath
from deform3d.models.model import stages
from deform3d.models.stride_attention import joint_plans, person_groups
from tests.test_fast_paths import random_params


def _inputs(persons, joints, seed=0):
  rs = np.random.RandomState(seed)
  frames = jnp.asarray(rs.randn(2, 8, 32, 32, 3), jnp.float32)
  keypoints = rs.uniform(-1, 1, (2, persons, 8, joints, 3)).astype(np.float32)
  if persons > 1:
    keypoints[1, persons - 1] = 0.0  # clip 1's second person is absent (padding)
  return frames, jnp.asarray(keypoints)


def _loop_and_scanned(settings, persons, joints):
  """The loop and scanned models of ``settings``, inputs, drawn per-block parameters and the
  same parameters stacked."""
  loop = build_model({**settings, "scan": False, "merge_in_block": False})
  scanned = build_model({**settings, "scan": True})
  frames, keypoints = _inputs(persons, joints)
  # Drawn parameters (every leaf off zero, heads and offsets included): no init to compile.
  abstract = jax.eval_shape(loop.init, jax.random.key(0), frames, keypoints)["params"]
  params = random_params(abstract, np.random.default_rng(0))
  stacked = convert.stack_blocks(params, scanned)
  assert convert.layout(stacked) == "stacked" and convert.layout(params) == "per_block"
  return loop, scanned, frames, keypoints, params, stacked


def _check_scan_equals_loop(settings, persons, joints):
  loop, scanned, frames, keypoints, params, stacked = _loop_and_scanned(settings, persons, joints)

  def loss(model):
    return jax.jit(jax.value_and_grad(
        lambda p: (model.apply({"params": p}, frames, keypoints) ** 2).sum()))

  value, grads = loss(loop)(params)
  value_s, grads_s = loss(scanned)(stacked)
  assert abs(float(value_s - value)) <= 1e-5 * abs(float(value))
  grads_s = convert.unstack_blocks(grads_s, scanned)
  assert jax.tree.structure(grads_s) == jax.tree.structure(grads)
  # Leaf by leaf against the gradient's overall scale (a few leaves, e.g. key biases, have a
  # gradient that is 0 up to rounding).
  scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads))
  for (path, g), g_s in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(grads_s)):
    err = float(jnp.abs(g_s - g).max())
    assert err <= 1e-5 * scale, (jax.tree_util.keystr(path), err, scale)


def test_scan_equals_loop_forward_tiny_two_persons():
  """The quick tier's check: logits only (two forward compiles); the gradients are the slow
  tests' below."""
  loop, scanned, frames, keypoints, params, stacked = _loop_and_scanned(
      {"variant": "tiny", "num_classes": 5}, persons=2, joints=17)
  logits = jax.jit(lambda p: loop.apply({"params": p}, frames, keypoints))(params)
  logits_s = jax.jit(lambda p: scanned.apply({"params": p}, frames, keypoints))(stacked)
  scale = float(jnp.abs(logits).max())
  assert float(jnp.abs(logits_s - logits).max()) <= 1e-5 * scale


@pytest.mark.slow
@pytest.mark.parametrize("settings,persons,joints", [
    ({"variant": "tiny"}, 2, 17),
    # 25 joints in windows of 5: stride 1 makes 5 groups, stride 2 six (a padding group).
    ({"variant": "embedded", "joint_window": 5, "fast": False}, 2, 25),
    ({"variant": "embedded", "joint_window": 5}, 2, 25),
    ({"variant": "tiny", "design": "pooled"}, 1, 17),
    ({"variant": "tiny", "remat": True, "fast": False}, 1, 17),
])
def test_scan_equals_loop(settings, persons, joints):
  _check_scan_equals_loop({**settings, "num_classes": 5}, persons, joints)


def test_stages_split_after_each_temporal_merge():
  assert stages((1, 1, 2, 1, 1, 2, 1, 1)) == [[0, 1, 2], [3, 4, 5], [6, 7]]
  assert stages((1, 2, 1, 2)) == [[0, 1], [2, 3]]
  assert stages((1, 2), merge_in_block=True) == [[0], [1]]


def test_joint_plans_are_the_groups_of_each_stride_padded():
  plans = joint_plans(25, 5, (1, 2), persons=2)
  assert plans.shape == (2, 12, 5)  # 6 groups per person (stride 2), stride 1 padded from 5
  for row, stride in zip(plans, (1, 2)):
    want = person_groups(25, 5, stride, 2)
    per = want.shape[0] // 2
    got = row.reshape(2, 6, 5)
    for m in range(2):
      np.testing.assert_array_equal(got[m, :per], want[m * per:(m + 1) * per])
      assert (got[m, per:] == -1).all()
  # Every joint of every person in exactly one slot of each plan.
  for row in plans:
    np.testing.assert_array_equal(np.sort(row[row >= 0]), np.arange(50))


def test_drop_path_with_given_draws():
  x = jnp.ones((3, 2))
  noise = jnp.asarray([0.1, 0.7, 0.49])
  out = DropPath(jnp.float32(0.5)).apply({}, x, deterministic=False, noise=noise)
  np.testing.assert_allclose(out, [[2, 2], [0, 0], [2, 2]])
  assert DropPath(0.5).apply({}, x, deterministic=True, noise=noise) is x


def test_merge_in_block_is_the_loop_only():
  model = build_model({"variant": "tiny", "num_classes": 5, "scan": True,
                       "merge_in_block": True})
  frames, keypoints = _inputs(1, 17)
  with pytest.raises(ValueError, match="merge_in_block"):
    model.init(jax.random.key(0), frames, keypoints)


def test_fsdp_never_splits_the_layer_axis_of_stacked_parameters():
  from deform3d.train import sharding as shd
  mesh = jax.sharding.AbstractMesh((4,), ("data",))
  leaf = jax.ShapeDtypeStruct((128, 8, 4), np.float32)  # the layer axis is the largest
  specs = shd.param_sharding({"stage0": {"block": {"kernel": leaf}}, "block0": {"kernel": leaf}},
                             mesh, "fsdp", min_size=16)
  assert specs["stage0"]["block"]["kernel"].spec == jax.sharding.PartitionSpec(None, "data", None)
  assert specs["block0"]["kernel"].spec == jax.sharding.PartitionSpec("data", None, None)
