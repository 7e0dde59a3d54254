"""The speed rewrites (``deform3d/models/fast.py``) against the plain model, the definition.

Each rewritten module must equal the plain module it subclasses, values and gradients, with the
same parameters, on random inputs; and the whole fast model must equal the plain model for the
model of every config in ``configs/``. The rewrites of the small pieces are also checked against
direct forms: custom-VJP batched matmuls vs ``jnp.einsum`` autodiff, the joint group layout vs
gathering by the index table, the folded depthwise conv vs ``nn.Conv`` on the projected input.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deform3d.models import (DeformableAttention3D, JointStrideAttention, MultiHeadAttention,
                             build_model, joint_groups, person_groups)
from deform3d.models.factory import resolved_config
from deform3d.models.fast import (DepthwisePatchConv, FastDeformableAttention3D,
                                  FastJointStrideAttention, FastMultiHeadAttention,
                                  JointGroupLayout)
from deform3d.ops.batched_matmul import matmul_nn, matmul_nt



def rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def _grads(fn, a, b, cot):
  return jax.vjp(fn, a, b)[1](cot)


@pytest.mark.parametrize("shape", [(640, 5, 5, 16), (96, 4, 4, 8), (16, 144, 36, 16), (3, 1, 7, 2)])
def test_batched_matmuls_match_einsum_with_gradients(rng, shape):
  bt, lq, lk, d = shape
  draw = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)
  q, k, p, v = draw(bt, lq, d), draw(bt, lk, d), draw(bt, lq, lk), draw(bt, lk, d)
  ref_nt = lambda a, b: jnp.einsum("bqd,bkd->bqk", a, b, precision="highest")
  ref_nn = lambda a, b: jnp.einsum("bqk,bkd->bqd", a, b, precision="highest")
  for fast, ref, a, b, out_shape in ((matmul_nt, ref_nt, q, k, (bt, lq, lk)),
                                     (matmul_nn, ref_nn, p, v, (bt, lq, d))):
    cot = draw(*out_shape)
    assert rel_err(jax.jit(fast)(a, b), ref(a, b)) < 1e-6
    got = jax.jit(lambda a, b, c: _grads(fast, a, b, c))(a, b, cot)
    want = _grads(ref, a, b, cot)
    for g, w in zip(got, want):
      assert g.shape == w.shape and g.dtype == w.dtype
      assert rel_err(g, w) < 1e-6


def test_batched_matmuls_bfloat16_keep_operand_dtypes(rng):
  q = jnp.asarray(rng.standard_normal((8, 5, 16)), jnp.bfloat16)
  k = jnp.asarray(rng.standard_normal((8, 5, 16)), jnp.bfloat16)
  logits = matmul_nt(q, k)
  assert logits.dtype == jnp.float32  # accumulated and returned in float32
  dq, dk = jax.grad(lambda a, b: jnp.sum(matmul_nt(a, b) ** 2), argnums=(0, 1))(q, k)
  assert dq.dtype == dk.dtype == jnp.bfloat16
  ref = jax.grad(lambda a, b: jnp.sum(jnp.einsum("bqd,bkd->bqk", a, b) ** 2), argnums=(0, 1))(
      q.astype(jnp.float32), k.astype(jnp.float32))
  assert rel_err(dq, ref[0]) < 3e-2 and rel_err(dk, ref[1]) < 3e-2


def perturbed(variables, rng, scale=0.3):
  """Every parameter moved off its initializer (zero-initialized ones would hide mistakes)."""
  return jax.tree.map(lambda p: p + scale * jnp.asarray(rng.standard_normal(p.shape), p.dtype),
                      variables)


def random_params(abstract, rng):
  """Parameters drawn for the shapes of ``abstract`` (``jax.eval_shape`` of ``init``), none at
  its initializer's value: kernels ``N(0, 1/fan_in)``, LayerNorm and LayerScale scales
  ``1 + N(0, 0.1^2)``, everything else (biases, embeddings, tokens) ``N(0, 0.1^2)``. Drawing
  them costs no compilation of ``init`` (about 18 s for a paper-scale model on this CPU)."""
  def draw(path, leaf):
    name = jax.tree_util.keystr(path[-1:])
    x = rng.standard_normal(leaf.shape)
    if "kernel" in name and len(leaf.shape) >= 2:
      projection = any(k in jax.tree_util.keystr(path) for k in ("query", "key", "value"))
      fan_in = leaf.shape[0] if projection else np.prod(leaf.shape[:-1])  # (C, heads, d)
      x = x / np.sqrt(fan_in)
    elif "scale" in name:
      x = 1.0 + 0.1 * x
    else:
      x = 0.1 * x
    return jnp.asarray(x, leaf.dtype)
  return jax.tree_util.tree_map_with_path(draw, abstract)


# A leaf's error may reach this multiple of its float32 rounding sensitivity (``rounding_noise``).
# Measured: the fast/plain differences of correct rewrites stay within 1-3x that sensitivity on
# the AVX-512 and AVX2 (``--xla_cpu_max_isa=AVX2``) code paths; a wrong rewrite is off by O(1).
NOISE_FACTOR = 10.0


def _f64(tree):
  return [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]


def grad_errors(ga, gb, noise=None, noise_factor=NOISE_FACTOR):
  """``(global, worst_leaf)``: the relative error of the whole gradient vector, and the worst
  leaf's max error relative to what float32 allows for that leaf: its own max or, for leaves
  whose true gradient is (near) 0 such as a key bias under softmax, 1e-3 of the largest
  gradient; or, where larger, ``noise_factor`` x ``noise`` (the leaf's float32 rounding
  sensitivity, ``rounding_noise``), times 1e-4 (the leaf tolerance the callers use)."""
  assert jax.tree.structure(ga) == jax.tree.structure(gb)
  la, lb = _f64(ga), _f64(gb)
  a = np.concatenate([np.ravel(x) for x in la])
  b = np.concatenate([np.ravel(x) for x in lb])
  scale = np.abs(a).max()
  ln = _f64(noise) if noise is not None else [0.0] * len(la)
  worst = max(float(np.abs(x - y).max()) / max(float(np.abs(x).max()), 1e-3 * scale,
                                                noise_factor * float(np.max(n)) / 1e-4)
              for x, y, n in zip(la, lb, ln))
  return float(np.linalg.norm(a - b) / np.linalg.norm(a)), worst


def rounding_noise(fn, variables, args, rng):
  """Per leaf, how far the gradients of ``fn`` (the plain module's jitted function) move when
  every parameter and input is changed by one float32 rounding (a relative 2^-24, random sign):
  the float32 precision of that leaf, measured on the machine running the test, so that the
  tolerance holds on every CPU (XLA picks other kernels and summation orders per ISA)."""
  def nudge(x):
    x = np.asarray(x)
    if x.dtype != np.float32:
      return x
    return (x.astype(np.float64) * (1 + 2.0**-24 * rng.choice([-1.0, 1.0], x.shape))
            ).astype(np.float32)
  (_, _), g0 = fn(variables, *args)
  (_, _), g1 = fn(jax.tree.map(nudge, variables), *[nudge(a) for a in args])
  return jax.tree.map(lambda x, y: np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)),
                      g0, g1)


def assert_same_function(plain, fast, variables, args, kwargs=None, leaf_tol=1e-4, tol=1e-5):
  """``fast.apply`` equals ``plain.apply``: the outputs (``tol`` relative to their largest value)
  and the gradients of a random projection of the output w.r.t. parameters and inputs (relative
  error of the whole gradient vector < ``tol``; each leaf below ``leaf_tol``, see
  ``grad_errors``: where a leaf misses that, its error is set against its float32 rounding
  sensitivity measured here, ``rounding_noise``). Output and gradients come from one jitted
  function per module."""
  kwargs = kwargs or {}
  first = lambda y: y[0] if isinstance(y, tuple) else y
  shape = jax.eval_shape(lambda v, *a: first(plain.apply(v, *a, **kwargs)), variables, *args)
  cot = jnp.asarray(np.random.default_rng(0).standard_normal(shape.shape), jnp.float32)

  def output_and_grads(module):
    def fn(v, *a):
      y = first(module.apply(v, *a, **kwargs))
      return jnp.sum(y * cot), y
    return jax.jit(jax.value_and_grad(fn, argnums=tuple(range(1 + len(args))), has_aux=True))

  plain_fn = output_and_grads(plain)
  (_, out), ga = plain_fn(variables, *args)
  (_, fast_out), gb = output_and_grads(fast)(variables, *args)
  assert rel_err(fast_out, out) < tol
  total, worst = grad_errors(ga, gb)
  assert total < tol, (total, worst)
  if worst >= leaf_tol:  # same compiled program, no new compile
    noise = rounding_noise(plain_fn, variables, args, np.random.default_rng(1))
    total, worst = grad_errors(ga, gb, noise)
  assert worst < leaf_tol, (total, worst)


def test_fast_attention_equals_plain_with_bias_mask_and_pooling(rng):
  x_q = jnp.asarray(rng.standard_normal((2, 3, 12, 32)), jnp.float32)
  x_kv = jnp.asarray(rng.standard_normal((2, 3, 7, 32)), jnp.float32)
  bias = jnp.asarray(rng.standard_normal((2, 3, 4, 12, 7)), jnp.float32)
  mask = jnp.asarray(rng.random((3, 1, 12, 7)) < 0.8).at[..., 0].set(True)
  plain, fast = MultiHeadAttention(4), FastMultiHeadAttention(4)
  variables = perturbed(plain.init(jax.random.key(0), x_q, x_kv), rng)
  assert_same_function(plain, fast, variables, (x_q, x_kv), dict(bias=bias, mask=mask))
  # pool_queries: the mean of every 3 consecutive queries' outputs, computed before the product.
  pooled, weights = fast.apply(variables, x_q, x_kv, bias=bias, pool_queries=3)
  full, plain_weights = plain.apply(variables, x_q, x_kv, bias=bias)
  assert pooled.shape == (2, 3, 4, 32)
  assert rel_err(pooled, np.asarray(full).reshape(2, 3, 4, 3, 32).mean(axis=3)) < 1e-5
  assert rel_err(weights, plain_weights) < 1e-6  # per-query weights still returned
  with pytest.raises(ValueError, match="pool_queries"):
    fast.apply(variables, x_q, x_kv, pool_queries=5)


@pytest.mark.parametrize("strides,shape,groups", [((2, 2, 2), (2, 4, 6, 6), 2),
                                                  ((1, 3, 2), (1, 3, 5, 7), 1)])
def test_projection_folded_into_depthwise_conv(rng, strides, shape, groups):
  """``DepthwisePatchConv(pointwise=(w, b))`` equals ``nn.Conv`` (depthwise, kernel = stride,
  edge padding) on each channel group of ``x @ w + b``, with gradients for every input."""
  c_in, c = 6, 4 * groups
  x = jnp.asarray(rng.standard_normal(shape + (c_in,)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((c_in, c)), jnp.float32)
  b = jnp.asarray(rng.standard_normal((c,)), jnp.float32)
  cg = c // groups
  conv = nn.Conv(cg, kernel_size=strides, strides=strides, padding="VALID", feature_group_count=cg)
  fast = DepthwisePatchConv(strides, groups=groups)
  variables = perturbed(fast.init(jax.random.key(0), x, (w, b)), rng, 1.0)
  assert jax.tree.map(jnp.shape, variables) == jax.tree.map(
      jnp.shape, conv.init(jax.random.key(0), jnp.zeros((1,) + strides + (cg,))))

  def plain(var, x, w, b):
    y = x @ w + b
    pads = [(0, 0)] + [(0, (-n) % s) for n, s in zip(shape[1:4], strides)] + [(0, 0)]
    y = jnp.pad(y, pads, mode="edge")
    y = y.reshape(y.shape[:4] + (groups, cg)).transpose(4, 0, 1, 2, 3, 5)
    out = jax.vmap(lambda v: conv.apply(var, v))(y)                  # (G, N, Ts, Hs, Ws, cg)
    return jnp.moveaxis(out, 0, 4).reshape(out.shape[1:5] + (c,))

  fused = lambda var, x, w, b: fast.apply(var, x, (w, b))
  out, ref = jax.jit(fused)(variables, x, w, b), plain(variables, x, w, b)
  assert out.shape == ref.shape
  assert rel_err(out, ref) < 1e-5
  cot = jnp.asarray(rng.standard_normal(ref.shape), jnp.float32)
  g_fused = jax.vjp(fused, variables, x, w, b)[1](cot)
  g_plain = jax.vjp(plain, variables, x, w, b)[1](cot)
  for gf, gp in zip(jax.tree.leaves(g_fused), jax.tree.leaves(g_plain)):
    assert rel_err(gf, gp) < 1e-5


@pytest.mark.parametrize("num_joints,window,stride,persons", [
    (17, 4, 1, 1), (17, 4, 2, 1), (17, 5, 2, 1), (5, 3, 2, 1), (25, 5, 3, 1), (1, 1, 1, 1),
    (17, 4, 2, 2), (5, 3, 2, 3)])
def test_joint_group_layout_equals_gathering_by_index(rng, num_joints, window, stride, persons):
  layout = JointGroupLayout(num_joints, window, stride, persons)
  idx = person_groups(num_joints, window, stride, persons)
  x = rng.standard_normal((2, 3, 1 + persons * num_joints, 4, 2)).astype(np.float32)
  got = np.asarray(layout.split(jnp.asarray(x)))
  ng, w = idx.shape
  assert got.shape == (2, 3, ng, 1 + w, 4, 2)
  for g in range(ng):
    np.testing.assert_array_equal(got[:, :, g, 0], x[:, :, 0])
    for slot, joint in enumerate(idx[g]):
      want = x[:, :, 1 + joint] if joint >= 0 else np.zeros_like(x[:, :, 0])
      np.testing.assert_array_equal(got[:, :, g, 1 + slot], want)
  # merge: joints back from their one slot, the cross token as the mean over groups.
  y = rng.standard_normal(got.shape).astype(np.float32)
  merged = np.asarray(layout.merge(jnp.asarray(y)))
  assert merged.shape == x.shape
  np.testing.assert_allclose(merged[:, :, 0], y[:, :, :, 0].mean(axis=2), rtol=1e-6)
  for g in range(ng):
    for slot, joint in enumerate(idx[g]):
      if joint >= 0:
        np.testing.assert_array_equal(merged[:, :, 1 + joint], y[:, :, g, 1 + slot])
  # With group weights (absent persons' groups 0), the cross token is the weighted mean.
  weights = jnp.asarray(rng.random((2, ng)) < 0.5).at[0].set(False)  # clip 0: nothing counts
  merged = np.asarray(JointGroupLayout(num_joints, window, stride, persons, weights).merge(
      jnp.asarray(y)))
  wn = np.asarray(weights, np.float32)
  want = ((y[:, :, :, 0] * wn[:, None, :, None, None]).sum(2)
          / np.maximum(wn.sum(1), 1)[:, None, None, None])
  np.testing.assert_allclose(merged[:, :, 0], want, rtol=1e-6, atol=1e-7)
  assert np.all(merged[0, :, 0] == 0)


@pytest.mark.slow
@pytest.mark.parametrize("context,pool", [(True, 1), (False, 6)])
def test_fast_deformable_attention_equals_plain(rng, context, pool):
  """Folded offset projection, unrolled relative-position MLP, pooled queries: the same function
  (with the cross-modal tokens as extra keys, as in the paper's block, or pooled queries, as in
  the earlier design)."""
  kw = dict(num_heads=4, num_groups=2, offset_strides=(2, 3, 2))
  volume = jnp.asarray(rng.standard_normal((2, 4, 7, 5, 16)), jnp.float32)  # odd: edge padding
  queries = jnp.asarray(rng.standard_normal((2, 12, 16)), jnp.float32)
  qpos = jnp.asarray(rng.uniform(-1, 1, (2, 12, 3)), jnp.float32)
  args = (queries, qpos, volume)
  if context:
    args += (jnp.asarray(rng.standard_normal((2, 5, 16)), jnp.float32),
             jnp.asarray(rng.uniform(-1, 1, (2, 5, 3)), jnp.float32))
  plain, fast = DeformableAttention3D(**kw), FastDeformableAttention3D(**kw)
  variables = perturbed(plain.init(jax.random.key(0), *args), rng)
  assert jax.tree.map(jnp.shape, variables) == jax.tree.map(
      jnp.shape, fast.init(jax.random.key(0), *args))
  assert_same_function(plain, fast, variables, args, dict(pool_queries=pool))


@pytest.mark.slow
@pytest.mark.parametrize("num_joints,window,stride,persons", [(17, 4, 2, 1), (5, 3, 1, 1),
                                                              (5, 3, 2, 3)])
def test_fast_joint_attention_equals_plain(rng, num_joints, window, stride, persons):
  z = jnp.asarray(rng.standard_normal((3, 3, 1 + persons * num_joints, 16)), jnp.float32)
  # Clip 0: all persons present; clip 1: only the first; clip 2: none.
  mask = None if persons == 1 else jnp.asarray(np.arange(persons)[None] < [[persons], [1], [0]])
  kw = {"person_mask": mask}
  plain = JointStrideAttention(4, window=window, stride=stride)
  fast = FastJointStrideAttention(4, window=window, stride=stride)
  variables = perturbed(plain.init(jax.random.key(0), z, **kw), rng)
  assert_same_function(plain, fast, variables, (z,), kw)
  _, sa = plain.apply(variables, z, **kw, mutable=["intermediates"])
  _, sb = fast.apply(variables, z, **kw, mutable=["intermediates"])
  sa, sb = sa["intermediates"], sb["intermediates"]
  assert rel_err(sb["joint_importance"][0], sa["joint_importance"][0]) < 1e-5
  # The same attention maps in every row of a real query (a padding slot's query row is
  # discarded; the plain form projects a zero token there, the fast form pads after projecting).
  idx = person_groups(num_joints, window, stride, persons)
  rows = np.concatenate([np.ones((idx.shape[0], 1), bool), idx >= 0], axis=1)  # (Ng, 1 + w)
  a, b = np.asarray(sa["attn"]["attention"][0]), np.asarray(sb["attn"]["attention"][0])
  assert rel_err(b.transpose(2, 4, 0, 1, 3, 5)[rows], a.transpose(2, 4, 0, 1, 3, 5)[rows]) < 1e-5


@pytest.mark.slow
def test_fast_model_equals_plain_model_with_persons(rng):
  """Three persons (the second absent in clip 1, all absent in clip 2): logits and gradients."""
  config = dict(variant="tiny", num_classes=3, joint_window=3, joint_strides=(2, 1),
                drop_path=0.0)
  frames = jnp.asarray(rng.standard_normal((3, 4, 32, 32, 3)), jnp.float32)
  keypoints = rng.uniform(-1, 1, (3, 3, 4, 5, 3)).astype(np.float32)
  keypoints[1, 1, ..., 2] = 0.0
  keypoints[2, ..., 2] = 0.0
  plain, fast = (build_model(dict(config, fast=f)) for f in (False, True))
  abstract = jax.eval_shape(plain.init, jax.random.key(0), frames, keypoints)["params"]
  assert_same_function(plain, fast, {"params": random_params(abstract, rng)},
                       (frames, jnp.asarray(keypoints)))


# Every config file with every argument value (tests/test_train.py loads and builds each).
ALL_CONFIGS = ["embedded", "embedded:variant=pooled", "embedded:variant=rgb_only",
               "embedded:variant=pose_only", "embedded:variant=tiny", "embedded:variant=micro",
               "finegym", "finegym:runlocal=true", "pennaction", "pennaction:runlocal=true"] + [
                   f"ntu:split={s},pose={p},runlocal={r}" for s in ("xsub60", "xview60",
                                                                   "xsub120", "xset120")
                   for p in ("hrnet", "kinect") for r in ("false", "true")]


# Every config file with every argument that changes its model (test_every_config_is_checked).
CONFIG_SPECS = ["embedded", "embedded:variant=pooled", "embedded:variant=rgb_only",
                "embedded:variant=pose_only", "embedded:variant=tiny", "finegym", "pennaction",
                "ntu:split=xsub60", "ntu:split=xsub60,pose=kinect"]


def config_models():
  """The distinct models of ``CONFIG_SPECS``, each named by the configs that use it; configs
  that differ only in ``num_classes`` share one. Float32, no dropout. The paper-scale models
  keep every architecture setting (joint layout, persons, strides, heads) but read short, small
  clips, on which they keep their first three blocks; NTU Kinect's keeps all eight on a larger
  clip (``check_config_model``; their 224 px, 32-frame form: docs/model.md gives the result of
  the same check run as ``python -m tests.test_fast_paths``)."""
  from configs.common import clip_shapes, load
  out = {}
  for spec in CONFIG_SPECS:
    config = load(spec)
    model = dict(config.model, dtype="float32", dropout=0.0, attn_dropout=0.0, drop_path=0.0)
    shapes = clip_shapes(config)
    key = repr(sorted((k, v) for k, v in model.items() if k != "num_classes")) + repr(shapes)
    out.setdefault(key, (model, shapes, []))[2].append(spec)
  return {"+".join(labels): (model, shapes) for model, shapes, labels in out.values()}


CONFIG_MODELS = config_models()
# The paper-scale model checked on the larger clip; the others on the small one (PAPER_CLIPS).
LARGE_CLIP_MODEL = "ntu:split=xsub60,pose=kinect"
# (frames, pixels, clips) of the paper-scale checks. Small: 2 x 2 RGB tokens of 2 frames
# (stem strides 16 and 2), so the first temporal merge leaves one; two clips, the second with
# its first person alone (absent persons' groups must stay out of the fast form too, which one
# clip cannot show). Large: 4 x 4 tokens of 4 frames, merged to 2 and 1; one clip.
PAPER_CLIPS = {"small": (4, 32, 2), "large": (8, 64, 1)}
# On the small clip a paper-scale model keeps its first PAPER_SMALL_DEPTH blocks (joint strides
# 1, 2, 1; temporal strides 1, 1, 2: each stride of the pattern and its first temporal merge);
# compiling is most of the check's time and grows with the blocks. The large clip's model keeps
# all eight.
PAPER_SMALL_DEPTH = 3


def check_config_model(model_config, shapes, full_size=False, batch=2, clip="small"):
  """Plain vs fast model on random inputs: logits and every parameter gradient. Paper-scale
  models (over 64 px) read ``PAPER_CLIPS[clip]`` unless ``full_size``."""
  t, image_size = shapes["frames"][:2]
  persons, j = shapes["keypoints"][:-3], shapes["keypoints"][-2]  # (T, J, 3) or (P, T, J, 3)
  if image_size > 64 and not full_size:
    t, image_size, batch = PAPER_CLIPS[clip]
    if clip == "small":
      sizes = resolved_config(model_config)
      n = PAPER_SMALL_DEPTH
      model_config = dict(model_config, depth=n, joint_strides=sizes["joint_strides"][:n],
                          temporal_strides=sizes["temporal_strides"][:n])
  rng = np.random.default_rng(0)
  frames = jnp.asarray(rng.standard_normal((batch, t, image_size, image_size, 3)), jnp.float32)
  shape = (batch,) + persons + (t, j)
  keypoints = rng.uniform(-1, 1, shape + (3,)).astype(np.float32)
  keypoints[..., 2:] = np.abs(keypoints[..., 2:]) * (rng.random(shape + (1,)) > 0.1)
  if persons and batch > 1:
    keypoints[1, 1:, ..., 2] = 0.0  # clip 1: its first person alone
  plain = build_model(dict(model_config, fast=False))
  fast = build_model(dict(model_config, fast=True))
  abstract = jax.eval_shape(plain.init, jax.random.key(0), frames, keypoints)["params"]
  assert_same_function(plain, fast, {"params": random_params(abstract, rng)},
                       (frames, jnp.asarray(keypoints)))


@pytest.mark.slow
@pytest.mark.parametrize("name", [
    pytest.param(n, marks=[pytest.mark.heavy] if CONFIG_MODELS[n][1]["frames"][1] > 64 else [])
    for n in sorted(CONFIG_MODELS)])  # the paper-scale models are the heavy ones
def test_fast_model_equals_plain_model_for_every_config(name):
  check_config_model(*CONFIG_MODELS[name], clip="large" if name == LARGE_CLIP_MODEL else "small")


def test_every_config_is_checked():
  labels = {l for name in CONFIG_MODELS for l in name.split("+")}
  # Every config file, every embedded variant, both NTU pose sources (the other NTU arguments
  # change only the class count, the data and the schedule, or give the tiny model).
  assert {s.split(":")[0] for s in ALL_CONFIGS} == {s.split(":")[0] for s in labels}
  # (micro, the trainer tests' model, is tiny's second block alone: checked with tiny.)
  embedded = {s for s in ALL_CONFIGS if s.startswith("embedded")}
  assert embedded - {"embedded:variant=micro"} <= labels
  assert any("kinect" in l for l in labels)


if __name__ == "__main__":  # the full-size check of the paper-scale configs (minutes on CPU)
  for name, (model_config, shapes) in sorted(CONFIG_MODELS.items()):
    if shapes["frames"][1] > 64:
      check_config_model(model_config, shapes, full_size=True, batch=1)
      print(f"{name}: fast == plain at full size (logits, gradients)")
