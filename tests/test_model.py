"""Shapes, numerics and learning behaviour of the Flax model."""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from deform3d.models import (DeformableAttention3D, DropPath, attention_maps, build_model,
                             joint_groups)
from deform3d.models.deformable import reference_grid
from deform3d.models.stride_attention import persons_present
from tests.test_fast_paths import random_params

# The tiny size of deform3d/models/model.py VARIANTS, with windows of 3 of the 5 joints drawn here.
TINY = dict(variant="tiny", num_classes=3, joint_window=3)


def make_inputs(rng, b=2, t=4, hw=32, j=5, d=3):
  frames = rng.standard_normal((b, t, hw, hw, 3)).astype(np.float32)
  keypoints = rng.uniform(-1, 1, size=(b, t, j, d)).astype(np.float32)
  return jnp.asarray(frames), jnp.asarray(keypoints)


def init(model, frames, keypoints, seed=0):
  return jax.jit(model.init)(jax.random.key(seed), frames, keypoints)


def map_shapes(model, frames, keypoints):
  """Shapes of everything ``attention_maps`` returns, by abstract evaluation (no compilation)."""
  variables = jax.eval_shape(model.init, jax.random.key(0), frames, keypoints)
  _, state = jax.eval_shape(
      lambda v: model.apply(v, frames, keypoints, mutable=["intermediates"]), variables)
  flat = flax.traverse_util.flatten_dict(state["intermediates"], sep="/")
  return {k: (v[0] if isinstance(v, tuple) and len(v) == 1 else v).shape
          for k, v in flat.items()}


@pytest.mark.parametrize("overrides,t,hw,expect_t", [
    ({}, 4, 32, 4),
    ({"use_pose": False}, 4, 32, 4),
    ({"use_rgb": False}, 4, 32, 4),
    ({"temporal_strides": (2, 2)}, 5, 32, 3),     # 5 -> 3: last frame repeated
    ({"stem_temporal_stride": 2, "temporal_strides": (1, 1)}, 6, 48, 3),
    ({"design": "pooled"}, 4, 32, 4),
    ({"num_cross_tokens": 1, "rgb_merge": False}, 4, 32, 4),
    ({"fast": False}, 4, 32, 4),
    ({"rgb_query_pos": "frame"}, 4, 32, 4),
    ({"remat": True}, 4, 32, 4),
])
@pytest.mark.slow
def test_output_shapes(rng, overrides, t, hw, expect_t):
  model = build_model({**TINY, **overrides})
  frames, keypoints = make_inputs(rng, t=t, hw=hw)
  # Random parameters of init's shapes: no compilation of init (finite logits are the check).
  variables = {"params": random_params(jax.eval_shape(model.init, jax.random.key(0), frames,
                                                      keypoints)["params"], rng)}
  logits, maps = attention_maps(model, variables, frames, keypoints)
  assert logits.shape == (2, 3)
  assert np.all(np.isfinite(logits))
  # Temporal token count entering the last block (its joint attention runs before its merge).
  last = maps["block1/joint_attn/joint_importance"]
  assert last.shape == (2, expect_t, 2, 5)
  has_cross = any("cross_attn" in k for k in maps)
  assert has_cross == model.use_rgb


def test_temporal_stride_shrinks_tokens(rng):
  model = build_model({**TINY, "temporal_strides": (2, 2), "num_cross_tokens": 2})
  frames, keypoints = make_inputs(rng, t=8)
  maps = map_shapes(model, frames, keypoints)
  assert maps["block0/joint_attn/joint_importance"][1] == 8
  assert maps["block1/joint_attn/joint_importance"][1] == 4
  # Deformable queries: the RGB tokens (T x 4 x 4 at 32 px) and the T x K cross-modal tokens;
  # keys: Ns sampled tokens (T/2 x 2 x 2) and the cross-modal tokens. T halves in block 1, for
  # the RGB stream too (rgb_merge).
  assert maps["block0/cross_attn/attn/attention"] == (2, 2, 8 * 16 + 8 * 2, 4 * 4 + 8 * 2)
  assert maps["block1/cross_attn/attn/attention"] == (2, 2, 4 * 16 + 4 * 2, 2 * 4 + 4 * 2)
  model = build_model({**TINY, "temporal_strides": (2, 2)})  # default K = 1
  maps = map_shapes(model, frames, keypoints)
  assert maps["block0/cross_attn/attn/attention"] == (2, 2, 8 * 16 + 8, 4 * 4 + 8)
  model = build_model({**TINY, "temporal_strides": (2, 2), "rgb_merge": False,
                       "num_cross_tokens": 2})
  maps = map_shapes(model, frames, keypoints)
  assert maps["block1/cross_attn/attn/attention"] == (2, 2, 8 * 16 + 4 * 2, 4 * 4 + 4 * 2)
  # The earlier design: the T (1 + J) cross and joint tokens query the sampled tokens alone.
  model = build_model({**TINY, "temporal_strides": (2, 2), "design": "pooled"})
  maps = map_shapes(model, frames, keypoints)
  assert maps["block0/cross_attn/attn/attention"] == (2, 2, 8 * 6, 4 * 4)
  assert maps["block1/cross_attn/attn/attention"] == (2, 2, 4 * 6, 4 * 4)


@pytest.mark.slow
def test_paper_block_updates_rgb_and_cross_tokens_from_sampled_and_cross_keys(rng):
  """The paper's 3D deformable attention: RGB tokens and cross-modal tokens are its queries and
  both streams change; the cross-modal tokens are keys beside the sampled tokens."""
  from deform3d.models import Block
  kw = dict(num_heads=2, num_groups=2, offset_strides=(2, 2, 2), offset_range_factor=2.0,
            joint_window=3, joint_stride=1, temporal_window=2, temporal_stride=1, mlp_ratio=2.0,
            dropout=0.0, attn_dropout=0.0, drop_path=0.0, layer_scale=0.1, rgb_merge=True,
            dtype=jnp.float32)
  rgb = jnp.asarray(rng.standard_normal((2, 4, 4, 4, 16)), jnp.float32)
  cross = jnp.asarray(rng.standard_normal((2, 4, 2, 16)), jnp.float32)
  pose = jnp.asarray(rng.standard_normal((2, 4, 5, 16)), jnp.float32)
  block = Block(**kw)
  variables = block.init(jax.random.key(0), rgb, cross, pose, None)
  (rgb2, cross2, pose2, _), state = block.apply(variables, rgb, cross, pose, None,
                                                 mutable=["intermediates"])
  assert rgb2.shape == rgb.shape and cross2.shape == cross.shape and pose2.shape == pose.shape
  assert float(jnp.abs(rgb2 - rgb).max()) > 1e-3  # the RGB stream is a transformer stream
  att = np.asarray(state["intermediates"]["cross_attn"]["attn"]["attention"][0])
  assert att.shape == (2, 2, 4 * 16 + 4 * 2, 2 * 2 * 2 + 4 * 2)
  assert np.all(att[..., 8:].sum(-1) > 0.1)  # every query attends to the cross-modal keys
  # Changing only the cross-modal tokens changes the RGB tokens' output (they are keys), and
  # changing one frame's RGB tokens changes the cross-modal tokens (they are queries).
  other = block.apply(variables, rgb, cross + jnp.asarray(rng.standard_normal(cross.shape),
                                                          jnp.float32), pose, None)
  assert float(jnp.abs(other[0] - rgb2).max()) > 1e-4
  other = block.apply(variables, rgb.at[:, 1].add(jnp.asarray(
      rng.standard_normal(rgb.shape[2:]), jnp.float32)), cross, pose, None)
  assert float(jnp.abs(other[1] - cross2).max()) > 1e-4
  # Pose-only: the RGB stream is absent and the joint/temporal layers still run.
  out = Block(**kw).apply(Block(**kw).init(jax.random.key(0), None, cross, pose, None),
                          None, cross, pose, None)
  assert out[0] is None and out[1].shape == cross.shape


@pytest.mark.slow
def test_remat_gives_the_same_gradients(rng):
  frames, keypoints = make_inputs(rng)
  grads = []
  for remat in (False, True):
    model = build_model({**TINY, "remat": remat, "drop_path": 0.2})
    variables = init(model, frames, keypoints)
    variables = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(2), p.shape),
                             variables)
    loss = lambda p: jnp.sum(model.apply(p, frames, keypoints, train=True,
                                         rngs={"dropout": jax.random.key(1)}) ** 2)
    grads.append(jax.jit(jax.grad(loss))(variables))
  for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6 * float(jnp.abs(a).max() + 1e-30))
  assert any(float(jnp.abs(a).max()) > 0 for a in jax.tree.leaves(grads[0]))


@pytest.mark.slow
def test_attention_maps_are_distributions(rng):
  model = build_model(TINY)
  frames, keypoints = make_inputs(rng)
  variables = init(model, frames, keypoints)
  # Random (non-zero-init) weights everywhere so that maps are not trivially uniform.
  variables = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(jax.random.key(7), p.shape),
                           variables)
  _, maps = attention_maps(model, variables, frames, keypoints)
  names = [k for k in maps if k.endswith("attention")]
  assert len(names) == 2 * 3  # cross, joint, temporal per block
  for name in names:
    w = np.asarray(maps[name])
    assert np.all(w >= 0)
    np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5, err_msg=name)
    assert w.std() > 1e-4, name  # not uniform
  # Padded joints (J=5, window 3, stride 1 -> groups [0,1,2], [3,4,pad]) receive no attention.
  joint = np.asarray(maps["block0/joint_attn/attn/attention"])  # (B, T, Ng, h, 1+w, 1+w)
  np.testing.assert_array_equal(joint[:, :, 1, :, :, 3], 0.0)
  # Joint importance of the cross token: per frame and head, sums over joints to <= 1.
  imp = np.asarray(maps["block0/joint_attn/joint_importance"])
  assert np.all(imp.sum(-1) <= 1.0 + 1e-5) and np.all(imp > 0)


@pytest.mark.slow
def test_persons_absent_ones_are_never_attended_to(rng):
  """Keypoints (B, P, T, J, 3): an absent person (all scores 0) changes nothing, whatever its
  coordinates; a present second person does; one person in the 5-D form is the 4-D model."""
  model = build_model({**TINY, "joint_strides": (2, 1), "drop_path": 0.0})
  frames, _ = make_inputs(rng)
  keypoints = np.asarray(rng.uniform(-1, 1, (2, 2, 4, 5, 3)), np.float32)
  keypoints[1, 1, ..., 2] = 0.0                              # clip 1: the second person is absent
  np.testing.assert_array_equal(persons_present(keypoints), [[True, True], [True, False]])
  np.testing.assert_array_equal(persons_present(keypoints[1]), [True, False])  # one clip
  abstract = jax.eval_shape(model.init, jax.random.key(0), frames, keypoints)["params"]
  assert abstract["pose_embed"]["person_embed"].shape == (2, 1, 32)
  variables = {"params": random_params(abstract, rng)}
  apply = jax.jit(lambda kp: attention_maps(model, variables, frames, kp))
  logits, maps = apply(keypoints)
  moved = keypoints.copy()
  moved[:, 1, ..., :2] = rng.uniform(-1, 1, moved[:, 1, ..., :2].shape)
  logits2, _ = apply(moved)
  np.testing.assert_array_equal(logits2[1], logits[1])     # absent: its coordinates do nothing
  assert float(jnp.abs(logits2[0] - logits[0]).max()) > 1e-4  # present: they matter
  for i in range(2):
    imp = np.asarray(maps[f"block{i}/joint_attn/joint_importance"])  # (B, T, heads, P * J)
    assert imp.shape[-1] == 10
    assert np.all(imp[1, ..., 5:] == 0) and np.all(imp[0, ..., 5:] > 0)
    assert np.all(imp.sum(-1) <= 1.0 + 1e-5)  # the rest is the cross token's weight on itself
  # One person: the 5-D input is the one-person model (no person embedding).
  one = build_model(TINY)
  abstract = jax.eval_shape(one.init, jax.random.key(0), frames, keypoints[:, :1])["params"]
  assert "person_embed" not in abstract["pose_embed"]
  v1 = {"params": random_params(abstract, rng)}
  np.testing.assert_array_equal(one.apply(v1, frames, keypoints[:, :1]),
                                one.apply(v1, frames, keypoints[:, 0]))
  # The person count is fixed at init; the earlier design takes one person.
  with pytest.raises(ValueError, match=r"PoseEmbed: .*made for \(2, 1, 32\) \(persons"):
    model.apply(variables, frames, np.concatenate([keypoints, keypoints[:, :1]], axis=1))
  with pytest.raises(ValueError, match="design='pooled' takes one person"):
    build_model({**TINY, "design": "pooled"}).init(jax.random.key(0), frames, keypoints)


def test_joint_groups_cover_each_joint_once():
  for j, w, s in [(17, 4, 1), (17, 4, 2), (25, 5, 2), (13, 3, 3), (5, 5, 1)]:
    idx = joint_groups(j, w, s)
    real = idx[idx >= 0]
    assert sorted(real.tolist()) == list(range(j)), (j, w, s)
    assert idx.shape[1] == w
  idx = joint_groups(8, 2, 2)
  np.testing.assert_array_equal(idx, [[0, 2], [1, 3], [4, 6], [5, 7]])
  with pytest.raises(ValueError):
    joint_groups(8, 0, 1)


@pytest.mark.slow
def test_jit_matches_eager_and_is_deterministic(rng):
  model = build_model(TINY)
  frames, keypoints = make_inputs(rng)
  variables = init(model, frames, keypoints)
  # The head is zero-initialised (logits exactly 0 at init): compare a model that computes.
  moved = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(4), p.shape),
                       variables)
  eager = model.apply(moved, frames, keypoints)
  jitted = jax.jit(model.apply)(moved, frames, keypoints)
  again = jax.jit(model.apply)(moved, frames, keypoints)
  assert float(jnp.std(eager)) > 1e-2  # logits that differ between clips and classes
  np.testing.assert_allclose(eager, jitted, rtol=1e-4, atol=1e-4 * float(jnp.abs(eager).max()))
  np.testing.assert_array_equal(jitted, again)
  # Same init seed -> same parameters; other seed -> other parameters.
  same = init(model, frames, keypoints, seed=0)
  other = init(model, frames, keypoints, seed=1)
  leaves = lambda v: np.concatenate([np.ravel(x) for x in jax.tree.leaves(v)])
  np.testing.assert_array_equal(leaves(variables), leaves(same))
  assert not np.array_equal(leaves(variables), leaves(other))


@pytest.mark.slow
def test_train_mode_uses_dropout_rng(rng):
  model = build_model({**TINY, "dropout": 0.3, "drop_path": 0.3})
  frames, keypoints = make_inputs(rng)
  variables = init(model, frames, keypoints)
  variables = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(3), p.shape),
                           variables)
  run = jax.jit(lambda v, key: model.apply(v, frames, keypoints, train=True,
                                           rngs={"dropout": key}))
  a, b, a2 = run(variables, jax.random.key(0)), run(variables, jax.random.key(1)), run(
      variables, jax.random.key(0))
  np.testing.assert_array_equal(a, a2)
  assert not np.allclose(a, b)


@pytest.mark.slow
def test_gradients_are_finite_and_nonzero(rng):
  model = build_model({**TINY, "drop_path": 0.2, "dropout": 0.1})
  frames, keypoints = make_inputs(rng)
  variables = init(model, frames, keypoints)
  # The head is zero-initialized (no gradient flows past it at init): perturb all weights.
  variables = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(2), p.shape),
                           variables)
  labels = jnp.array([0, 2])

  def loss_fn(params):
    logits = model.apply({"params": params}, frames, keypoints, train=True,
                         rngs={"dropout": jax.random.key(1)})
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  grads = jax.jit(jax.grad(loss_fn))(variables["params"])
  flat = flax.traverse_util.flatten_dict(grads, sep="/")
  for name, g in flat.items():
    assert np.all(np.isfinite(g)), name
  # Every stage of the network receives gradient.
  for part in ("rgb_stem", "pose_embed", "cross_attn", "rgb_mlp", "joint_attn", "temporal_attn",
               "head"):
    total = sum(float(jnp.abs(g).sum()) for k, g in flat.items() if part in k)
    assert total > 0, part


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_params(rng):
  frames, keypoints = make_inputs(rng)
  f32 = build_model(TINY)
  bf16 = build_model({**TINY, "dtype": "bfloat16"})
  variables = init(f32, frames, keypoints)
  variables = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(5), p.shape),
                           variables)
  v16 = init(bf16, frames, keypoints)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(v16))
  a = jax.jit(f32.apply)(variables, frames, keypoints)
  b = jax.jit(bf16.apply)(variables, frames, keypoints)
  assert b.dtype == jnp.float32
  rel = float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(a)))
  # bfloat16 keeps 8 significant bits: a model computed in it differs from float32 by far more
  # than float32 rounding (an ignored ``dtype`` gives 0 here), and by less than 10%.
  assert 1e-3 < rel < 0.1, rel


@pytest.mark.slow
def test_deformable_points_start_on_grid_and_stay_in_range(rng):
  module = DeformableAttention3D(num_heads=2, num_groups=2, offset_strides=(2, 2, 2),
                                 offset_range_factor=1.5)
  volume = jnp.asarray(rng.standard_normal((2, 4, 8, 8, 16)), jnp.float32)
  queries = jnp.asarray(rng.standard_normal((2, 6, 16)), jnp.float32)
  qpos = jnp.asarray(rng.uniform(-1, 1, (2, 6, 3)), jnp.float32)
  variables = module.init(jax.random.key(0), queries, qpos, volume)
  out, state = module.apply(variables, queries, qpos, volume, mutable=["intermediates"])
  assert out.shape == (2, 6, 16)
  pts = np.asarray(state["intermediates"]["sampling_points"][0])  # (B, G, Ns, 3)
  ref = np.asarray(reference_grid((2, 4, 4))).reshape(-1, 3)
  np.testing.assert_allclose(pts, np.broadcast_to(ref, pts.shape), atol=1e-6)  # zero-init offsets
  # Large random offset weights: points move, but at most offset_range_factor cells.
  params = flax.core.unfreeze(variables["params"])
  params["offset_out"]["kernel"] = 10.0 * jax.random.normal(jax.random.key(1), (16 // 2, 3))
  _, state = module.apply({"params": params}, queries, qpos, volume, mutable=["intermediates"])
  pts = np.asarray(state["intermediates"]["sampling_points"][0])
  moved = np.abs(pts - ref)
  bound = 1.5 * 2.0 / np.array([4, 4, 2])  # cells in x (W), y (H), z (T)
  assert moved.max() > 0.1
  assert np.all(moved <= bound + 1e-6)
  assert np.all(np.abs(pts) <= 1.0)


def test_drop_path_drops_whole_examples():
  x = jnp.ones((64, 3, 4))
  out = DropPath(0.5).apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)})
  per_example = np.asarray(out).reshape(64, -1)
  assert set(np.unique(per_example).tolist()) <= {0.0, 2.0}
  assert np.all(per_example.min(1) == per_example.max(1))
  assert 10 < (per_example[:, 0] == 0).sum() < 54
  np.testing.assert_array_equal(DropPath(0.5).apply({}, x, deterministic=True), x)


@pytest.mark.slow
def test_bad_config_and_inputs_raise(rng):
  with pytest.raises(TypeError, match="unknown model config keys"):
    build_model({**TINY, "embed_dims": 3})
  with pytest.raises(ValueError, match="dtype"):
    build_model({**TINY, "dtype": "float8"})
  model = build_model({**TINY, "temporal_strides": (1,)})
  frames, keypoints = make_inputs(rng)
  with pytest.raises(ValueError, match="temporal_strides has 1 entries"):
    model.init(jax.random.key(0), frames, keypoints)
  model = build_model(TINY)
  with pytest.raises(ValueError,
                     match=r"keypoints \(B, T, J, D\) or \(B, P, T, J, D\) are required"):
    model.init(jax.random.key(0), frames, keypoints[:, :, 0])
  with pytest.raises(ValueError, match=r"frames must be \(B, T, H, W, 3\) with \(B, T\)"):
    model.init(jax.random.key(0), frames[:, :3], keypoints)
  # The frame and joint counts come from the inputs at init; other counts later are refused.
  variables = init(model, frames, keypoints)
  with pytest.raises(ValueError, match=r"PoseEmbed: .*made for \(5, 32\) \(joints.*gives \(4, 32\)"):
    model.apply(variables, frames, keypoints[:, :, :4])
  with pytest.raises(ValueError, match=r"RGBStem: .*made for \(4, 1, 1, 32\).*gives \(3, 1, 1"):
    model.apply(variables, frames[:, :3], keypoints[:, :3])
  with pytest.raises(ValueError, match=r"PoseEmbed: .*made for \(4, 1, 32\).*gives \(3, 1, 32"):
    build_model({**TINY, "use_rgb": False}).apply(
        init(build_model({**TINY, "use_rgb": False}), frames, keypoints), frames[:, :3],
        keypoints[:, :3])
  with pytest.raises(TypeError, match="lacks.*set model.variant"):
    build_model({"num_classes": 3})
  with pytest.raises(ValueError, match="model.variant must be one of"):
    build_model({"variant": "huge", "num_classes": 3})
  with pytest.raises(ValueError, match="design must be one of"):
    build_model({**TINY, "design": "dat"}).init(jax.random.key(0), frames, keypoints)
  with pytest.raises(ValueError, match="rgb_query_pos must be"):
    build_model({**TINY, "rgb_query_pos": "centre"}).init(jax.random.key(0), frames, keypoints)
  with pytest.raises(ValueError, match="num_cross_tokens must be 1 or 2"):
    build_model({**TINY, "num_cross_tokens": 3}).init(jax.random.key(0), frames, keypoints)
  with pytest.raises(ValueError, match="backward must be one of"):
    build_model({**TINY, "sampler_backward": "scatter"}).init(jax.random.key(0), frames,
                                                              keypoints)


@pytest.mark.slow
def test_sampler_backward_reaches_the_sampler(rng, monkeypatch):
  """``sampler_backward`` selects grid_sample_3d's gradient (the variants are checked equal in
  tests/test_sampling.py): tracing the model's gradient calls the sampler's volume-gradient
  builder with exactly the variant asked for (``auto``: the backend's entry of the table), and
  not at all for autodiff."""
  from deform3d.ops import sampling
  frames, keypoints = make_inputs(rng)
  variables = jax.eval_shape(build_model(TINY).init, jax.random.key(0), frames, keypoints)
  seen = []
  real = sampling._volume_grad

  def spy(shape, dtype, idx, wts, cot, backward):
    seen.append(backward)
    return real(shape, dtype, idx, wts, cot, backward)

  monkeypatch.setattr(sampling, "_volume_grad", spy)

  def traced(backward):
    jax.clear_caches()  # trace afresh: a cached trace would not call the spy
    seen.clear()
    model = build_model({**TINY, "sampler_backward": backward})
    loss = lambda v, f: model.apply(v, f, keypoints).sum()
    jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(variables, frames)
    return set(seen)

  assert traced("sorted") == {"sorted"}
  assert traced("onehot") == {"onehot"}
  assert traced("autodiff") == set()
  auto = sampling.AUTO_BACKWARD["cpu"]
  assert traced("auto") == (set() if auto == "autodiff" else {auto})


@pytest.mark.slow
def test_learns_a_tiny_cross_modal_problem():
  """4 classes = (colour of the frames) x (body above/below centre): needs both modalities."""
  data_rng = np.random.default_rng(0)
  n, t, hw, j = 32, 4, 32, 5
  colour = data_rng.integers(0, 2, n)
  height = data_rng.integers(0, 2, n)
  labels = colour * 2 + height
  frames = 0.3 * data_rng.standard_normal((n, t, hw, hw, 3))
  frames[..., 0] += np.where(colour, 1.0, -1.0)[:, None, None, None]
  xy = data_rng.uniform(-0.5, 0.5, (n, 1, j, 2)) + 0.05 * data_rng.standard_normal((n, t, j, 2))
  xy[..., 1] += np.where(height, 0.4, -0.4)[:, None, None]
  keypoints = np.concatenate([xy, np.ones((n, t, j, 1))], -1)
  frames, keypoints = jnp.asarray(frames, jnp.float32), jnp.asarray(keypoints, jnp.float32)
  labels = jnp.asarray(labels)

  model = build_model({**TINY, "num_classes": 4, "drop_path": 0.0})
  params = init(model, frames[:2], keypoints[:2])["params"]
  tx = optax.adam(3e-3)
  opt = tx.init(params)

  def loss_fn(p):
    logits = model.apply({"params": p}, frames, keypoints)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  @jax.jit
  def step(p, o):
    loss, g = jax.value_and_grad(loss_fn)(p)
    updates, o = tx.update(g, o, p)
    return optax.apply_updates(p, updates), o, loss

  first = None
  for _ in range(120):
    params, opt, loss = step(params, opt)
    first = float(loss) if first is None else first
  final = float(loss_fn(params))
  assert first == pytest.approx(np.log(4), rel=1e-3)  # zero-init head: uniform start
  assert final < first / 10, (first, final)
  acc = float((model.apply({"params": params}, frames, keypoints).argmax(-1) == labels).mean())
  assert acc == 1.0


def test_uint8_frames_are_normalized_inside_the_model(rng):
  """The input pipeline sends uint8 pixels (``dataset.frames_dtype``); the model normalizes them
  itself, giving the logits of the normalized float frames."""
  from deform3d.pixels import MEAN, STD
  model = build_model(dict(variant="tiny", num_classes=3))
  pixels = rng.integers(0, 256, (2, 4, 32, 32, 3)).astype(np.uint8)
  keypoints = jnp.asarray(rng.uniform(-1, 1, (2, 4, 17, 3)), jnp.float32)
  abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.asarray(pixels), keypoints)
  variables = {"params": random_params(abstract["params"], rng)}  # no zero-initialized head
  apply = jax.jit(model.apply)  # one compile per input dtype, not op-by-op dispatch
  got = apply(variables, jnp.asarray(pixels), keypoints)
  want = apply(variables, jnp.asarray((pixels.astype(np.float32) - MEAN) / STD), keypoints)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  raw = apply(variables, jnp.asarray(pixels, jnp.float32), keypoints)  # not normalized
  assert np.abs(np.asarray(raw) - np.asarray(want)).max() > 1e-2


def test_cross_init_rgb_pose_pools_present_persons_only(rng):
  """``cross_init="rgb_pose"``: the first cross token also starts from the frame's pose tokens,
  pooled (mean and max) over the joints of the persons present; ``pooled_pose`` against a loop
  over clips, and in the model an absent person's coordinates still change nothing."""
  from deform3d.models.model import pooled_pose
  pose = rng.standard_normal((2, 3, 2 * 4, 5)).astype(np.float32)  # (B, T, P * J, C), J = 4
  mask = np.array([[True, True], [False, True]])
  got = np.asarray(pooled_pose(jnp.asarray(pose), jnp.asarray(mask), 4))
  for b in range(2):
    joints = np.concatenate([pose[b, :, p * 4:(p + 1) * 4] for p in range(2) if mask[b, p]], 1)
    want = np.concatenate([joints.mean(1), joints.max(1)], -1)
    np.testing.assert_allclose(got[b], want, rtol=1e-6)
  np.testing.assert_allclose(pooled_pose(jnp.asarray(pose), None, 4),
                             np.concatenate([pose.mean(2), pose.max(2)], -1), rtol=1e-6)

  model = build_model({**TINY, "cross_init": "rgb_pose", "drop_path": 0.0})
  frames, _ = make_inputs(rng)
  keypoints = np.asarray(rng.uniform(-1, 1, (2, 2, 4, 5, 3)), np.float32)
  keypoints[1, 1, ..., 2] = 0.0  # clip 1: the second person is absent
  abstract = jax.eval_shape(model.init, jax.random.key(0), frames, keypoints)["params"]
  assert abstract["cross_init_pose"]["kernel"].shape == (64, 32)
  params = random_params(abstract, rng)
  apply = jax.jit(lambda p, kp: model.apply({"params": p}, frames, kp))
  logits = apply(params, keypoints)
  moved = keypoints.copy()
  moved[:, 1, ..., :2] = rng.uniform(-1, 1, moved[:, 1, ..., :2].shape)
  np.testing.assert_array_equal(apply(params, moved)[1], logits[1])  # absent: nothing
  zeroed = dict(params, cross_init_pose=jax.tree_util.tree_map(jnp.zeros_like,
                                                               params["cross_init_pose"]))
  assert float(jnp.abs(apply(zeroed, keypoints) - logits).max()) > 1e-4  # the projection is used
  with pytest.raises(ValueError, match="cross_init must be one of"):
    jax.eval_shape(build_model({**TINY, "cross_init": "pose"}).init, jax.random.key(0), frames,
                   keypoints)  # raised while tracing


@pytest.mark.slow
def test_cross_init_scale_scales_the_projections_only(rng):
  """``cross_init_scale`` scales both cross_init projections' initial weights, nothing else
  (two compiled inits: about 25 s, hence slow)."""
  frames, _ = make_inputs(rng)
  keypoints = np.asarray(rng.uniform(-1, 1, (2, 2, 4, 5, 3)), np.float32)
  inits = [jax.jit(build_model({**TINY, "cross_init": "rgb_pose", "cross_init_scale": s}).init)(
      jax.random.key(3), frames, keypoints)["params"] for s in (1.0, 0.1)]
  for name in ("cross_init", "cross_init_pose"):
    np.testing.assert_allclose(inits[1][name]["kernel"], 0.1 * inits[0][name]["kernel"],
                               rtol=1e-6)
  rest = [{k: v for k, v in p.items() if not k.startswith("cross_init")} for p in inits]
  jax.tree.map(np.testing.assert_array_equal, rest[0], rest[1])


def test_pose_norm_features_are_in_body_size_units(rng):
  from deform3d.models.embeddings import PoseEmbed, pose_features
  kp = rng.uniform(-0.3, 0.3, (2, 4, 6, 3)).astype(np.float32)
  kp[..., 2] = rng.uniform(0.5, 1.0, kp.shape[:3])
  kp[0, 1, 2] = (0.9, -0.9, 0.0)  # a missing joint (score 0) far from the body
  raw = np.asarray(pose_features(jnp.asarray(kp)))
  got = np.asarray(pose_features(jnp.asarray(kp), normalize=True))
  # Reference: offsets and motion divided by the RMS offset over the clip's present joints.
  present = kp[..., 2] > 0
  for b in range(2):
    size = np.sqrt((raw[b, ..., 3:5][present[b]] ** 2).sum(-1).mean())
    np.testing.assert_allclose(got[b, ..., 3:], raw[b, ..., 3:] / size, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got[b, ..., :3], kp[b])
  # Moving the person and scaling it about its centre leaves the normalized features unchanged.
  moved = kp.copy()
  centre = np.asarray([0.1, -0.2], np.float32)
  moved[..., :2] = np.where(present[..., None], 0.4 * kp[..., :2] + centre, kp[..., :2])
  np.testing.assert_allclose(np.asarray(pose_features(jnp.asarray(moved), normalize=True))[..., 3:],
                             got[..., 3:], rtol=1e-4, atol=1e-5)
  # The tokens' coordinate part is LayerNormed: unit RMS per token over the channels at init.
  embed = PoseEmbed(16, normalize=True)
  params = embed.init(jax.random.key(0), jnp.asarray(kp))["params"]
  assert set(params["coord_norm"]) == {"scale", "bias"}
  no_embeddings = dict(params, joint_embed=jnp.zeros_like(params["joint_embed"]),
                       time_embed=jnp.zeros_like(params["time_embed"]))
  tokens = np.asarray(embed.apply({"params": no_embeddings}, jnp.asarray(kp)))
  np.testing.assert_allclose(np.sqrt((tokens[present] ** 2).mean(-1)), 1.0, rtol=1e-3)
  assert "coord_norm" not in PoseEmbed(16).init(jax.random.key(0), jnp.asarray(kp))["params"]
  # An absent person (every score 0, as the second person of a one-person clip): zero offsets
  # and motion, and finite gradients w.r.t. the keypoints (what integrated gradients reads).
  absent = kp.copy()
  absent[1, ..., 2] = 0.0
  feats = pose_features(jnp.asarray(absent), normalize=True)
  np.testing.assert_array_equal(np.asarray(feats)[1, ..., 3:], 0.0)
  grad = jax.grad(lambda k: jnp.sum(pose_features(k, normalize=True) ** 2))(jnp.asarray(absent))
  assert np.isfinite(np.asarray(grad)).all()


@pytest.mark.slow
def test_cross_rgb_scale_zero_starts_the_fusion_tokens_from_pose_alone(rng):
  frames, keypoints = make_inputs(rng)
  model = build_model({**TINY, "cross_rgb_scale": 0.0, "cross_init_scale": 0.0,
                       "drop_path": 0.0})
  params = init(model, frames, keypoints)["params"]
  for i in range(2):
    np.testing.assert_array_equal(params[f"block{i}"]["drop_cross_scale"], 0.0)
    np.testing.assert_allclose(params[f"block{i}"]["drop_joint_scale"], 0.1)  # layer_scale
  np.testing.assert_array_equal(params["cross_init"]["kernel"], 0.0)
  # At initialization the classifying tokens see no RGB: other frames, the same features.
  params = dict(params, head=dict(params["head"], kernel=jnp.asarray(
      rng.standard_normal(params["head"]["kernel"].shape), jnp.float32)))
  apply = jax.jit(lambda p, f, k: model.apply({"params": p}, f, k))
  other = jnp.asarray(rng.standard_normal(frames.shape), jnp.float32)
  np.testing.assert_allclose(apply(params, other, keypoints), apply(params, frames, keypoints),
                             rtol=1e-5, atol=1e-6)
  # Once the gate opens (as training moves it), the frames reach them.
  opened = dict(params, block0=dict(params["block0"], drop_cross_scale=jnp.full_like(
      params["block0"]["drop_cross_scale"], 0.1)))
  moved = apply(opened, other, keypoints) - apply(opened, frames, keypoints)
  assert float(jnp.abs(moved).max()) > 1e-4
  # Without layer_scale the gate is the only LayerScale parameter.
  plain = build_model({**TINY, "layer_scale": 0.0, "cross_rgb_scale": 0.0})
  names = set(init(plain, frames, keypoints)["params"]["block0"])
  assert {n for n in names if n.endswith("_scale")} == {"drop_cross_scale"}
