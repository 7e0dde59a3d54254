"""The rewritten computations of the speed work (docs/performance.md) against direct forms.

Each fast path must equal the straightforward computation it replaces, values and gradients, on
random inputs: custom-VJP batched matmuls vs ``jnp.einsum`` autodiff, the sampler's weight sum
vs a float64 loop, the projection folded into the depthwise conv vs projecting first, the joint
group layout vs gathering by the index table, and the standardized-volume path vs the plain one.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deform3d.models import DeformableAttention3D, DepthwisePatchConv, joint_groups
from deform3d.models.layers import standardize
from deform3d.models.stride_attention import JointGroupLayout
from deform3d.ops import grid_sample_3d
from deform3d.ops.batched_matmul import matmul_nn, matmul_nt
from deform3d.ops.sampling import sample_weight_sum
from tests.test_sampling import numpy_reference


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


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
def test_sample_weight_sum_is_sampling_ones(rng, align_corners, padding_mode):
  """Independent reference: the float64 loop sampling a volume of ones. Then the identity the
  deformable attention relies on: sample(v * a + b) = sample(v) * a + b * weight_sum."""
  shape = (2, 3, 4, 5, 6)
  grid = rng.uniform(-1.4, 1.4, (2, 7, 3)).astype(np.float32)
  grid[0, :3] = [[-1, -1, -1], [1, 1, 1], [-1, 0.3, 1]]  # the clip boundary the model uses
  got = sample_weight_sum(shape, jnp.asarray(grid), align_corners=align_corners,
                          padding_mode=padding_mode)
  ref = numpy_reference(np.ones(shape[:4] + (1,)), grid, align_corners, padding_mode)[..., 0]
  assert got.shape == (2, 7)
  assert rel_err(got, ref) < 1e-6
  assert np.any(np.asarray(got) < 0.999) or padding_mode == "border"
  v = jnp.asarray(rng.standard_normal(shape), jnp.float32)
  a = jnp.asarray(rng.standard_normal(shape[-1]), jnp.float32)
  b = jnp.asarray(rng.standard_normal(shape[-1]), jnp.float32)
  kw = dict(align_corners=align_corners, padding_mode=padding_mode)
  lhs = grid_sample_3d(v * a + b, jnp.asarray(grid), **kw)
  rhs = grid_sample_3d(v, jnp.asarray(grid), **kw) * a + got[..., None] * b
  assert rel_err(rhs, lhs) < 1e-5


@pytest.mark.parametrize("strides,shape,groups", [((2, 2, 2), (2, 4, 6, 6), 2),
                                                  ((1, 3, 2), (1, 3, 5, 7), 1)])
def test_projection_folded_into_depthwise_conv(rng, strides, shape, groups):
  """``pointwise=(w, b)`` equals convolving ``x @ w + b`` (edge padding included), with
  gradients for x, w, b and the conv's own parameters."""
  c_in, c = 6, 4 * groups
  x = jnp.asarray(rng.standard_normal(shape + (c_in,)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((c_in, c)), jnp.float32)
  b = jnp.asarray(rng.standard_normal((c,)), jnp.float32)
  conv = DepthwisePatchConv(strides, groups=groups)
  variables = conv.init(jax.random.key(0), x @ w + b)
  variables = jax.tree.map(lambda p: p + jnp.asarray(rng.standard_normal(p.shape), jnp.float32),
                           variables)
  fused = lambda var, x, w, b: conv.apply(var, x, pointwise=(w, b))
  plain = lambda var, x, w, b: conv.apply(var, x @ w + b)
  out, ref = jax.jit(fused)(variables, x, w, b), plain(variables, x, w, b)
  assert out.shape == ref.shape
  assert rel_err(out, ref) < 1e-5
  cot = jnp.asarray(rng.standard_normal(ref.shape), jnp.float32)
  g_fused = jax.vjp(fused, variables, x, w, b)[1](cot)
  g_plain = jax.vjp(plain, variables, x, w, b)[1](cot)
  for gf, gp in zip(jax.tree.leaves(g_fused), jax.tree.leaves(g_plain)):
    assert rel_err(gf, gp) < 1e-5


@pytest.mark.parametrize("num_joints,window,stride", [(17, 4, 1), (17, 4, 2), (17, 5, 2),
                                                      (5, 3, 2), (25, 5, 3), (1, 1, 1)])
def test_joint_group_layout_equals_gathering_by_index(rng, num_joints, window, stride):
  layout = JointGroupLayout(num_joints, window, stride)
  idx = joint_groups(num_joints, window, stride)
  x = rng.standard_normal((2, 3, 1 + num_joints, 4, 2)).astype(np.float32)
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


def test_standardized_volume_path_equals_the_plain_one(rng):
  """The model standardizes the RGB volume once and each block applies its LayerNorm's scale
  and bias to the offset projection and the samples; the result equals LayerNorm first."""
  module = DeformableAttention3D(num_heads=4, num_groups=2, offset_strides=(2, 2, 2))
  volume = jnp.asarray(3.0 + 2.0 * rng.standard_normal((2, 4, 6, 5, 16)), jnp.float32)
  queries = jnp.asarray(rng.standard_normal((2, 6, 16)), jnp.float32)
  qpos = jnp.asarray(rng.uniform(-1, 1, (2, 6, 3)), jnp.float32)
  variables = module.init(jax.random.key(0), queries, qpos, volume)
  variables = jax.tree.map(lambda p: p + 0.3 * jnp.asarray(rng.standard_normal(p.shape),
                                                           jnp.float32), variables)
  plain = module.apply(variables, queries, qpos, volume)
  std = module.apply(variables, queries, qpos, standardize(volume), standardized=True)
  assert rel_err(std, plain) < 1e-5
