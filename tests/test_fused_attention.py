"""The fused deformable attention (``ops/fused_attention.py``, Pallas, interpret mode on CPU)
against the materialized formula and against the plain modules, the definition.

* the op: values and the gradients of all six inputs against ``reference`` (the bias, logits and
  weights materialized, autodiff), in float32 (1e-5 relative) and bfloat16, with sequences that
  are not multiples of the tiles and several tiles each way, and at the paper-scale shapes;
* the module: ``FusedDeformableAttention3D`` equals ``DeformableAttention3D`` with the same
  parameters, at the shapes of the first block's deformable attention of every config's model
  (read from the model itself), values and gradients;
* the model: ``attention_kernel="pallas"`` equals the plain model (both designs, two persons);
  ``attention_maps`` still returns the weights; bad settings are refused.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deform3d.models import DeformableAttention3D, attention_maps, build_model
from deform3d.models.fast import FastDeformableAttention3D, FusedDeformableAttention3D
from deform3d.ops import fused_attention
from tests.test_fast_paths import (CONFIG_MODELS, assert_same_function, perturbed,
                                   random_params, rel_err)


def _inputs(rng, b, h, g, n_q, n_k, d, hidden=8, dtype=jnp.float32):
  draw = lambda *s: jnp.asarray(rng.standard_normal(s), jnp.float32)
  q, k, v = draw(b, h, n_q, d), draw(b, h, n_k, d), draw(b, h, n_k, d)
  return (q.astype(dtype), k.astype(dtype), v.astype(dtype), draw(b, n_q, hidden),
          draw(b, g, n_k, hidden), draw(hidden, h))


def _check_op(rng, shape, tol, dtype=jnp.float32, **blocks):
  """The op (by default the GPU kernel's shapes in interpret mode, as on CPU) against
  ``reference``: values and the gradients of all six inputs."""
  args = _inputs(rng, *shape, dtype=dtype)
  fused = jax.jit(lambda *a: fused_attention.deformable_attention(*a, **blocks))
  reference = jax.jit(fused_attention.reference)  # one compile, not op-by-op dispatch
  out, ref = fused(*args), reference(*args)
  assert out.shape == ref.shape and out.dtype == ref.dtype
  if dtype == jnp.float32:
    # bfloat16 results are set against the float32 reference below instead.
    assert rel_err(out, ref) < tol
  exact = reference(*(a.astype(jnp.float32) for a in args))
  assert rel_err(out, exact) < tol
  cot = jnp.asarray(rng.standard_normal(ref.shape), jnp.float32)
  loss = lambda fn: lambda *a: jnp.sum(fn(*a).astype(jnp.float32) * cot)
  got = jax.jit(jax.grad(loss(lambda *a: fused_attention.deformable_attention(*a, **blocks)),
                         argnums=tuple(range(6))))(*args)
  want = jax.jit(jax.grad(loss(fused_attention.reference), argnums=tuple(range(6))))(
      *(a.astype(jnp.float32) for a in args))
  for name, a, b in zip(("q", "k", "v", "query_hidden", "key_hidden", "w2"), got, want):
    assert a.shape == b.shape, name
    assert a.dtype == args[("q", "k", "v", "query_hidden", "key_hidden", "w2").index(name)].dtype
    assert rel_err(a, b) < tol, (name, rel_err(a, b))


@pytest.mark.parametrize("shape,blocks", [
    ((2, 4, 2, 70, 37, 8), dict(block_q=32, block_k=16)),   # 3 query tiles, 3 key tiles, padded
    ((1, 2, 1, 5, 3, 4), dict()),                            # shorter than one tile
    ((2, 4, 4, 48, 40, 16), dict(block_q=16, block_k=16)),  # one head per group
])
def test_op_equals_materialized_attention_float32(rng, shape, blocks):
  _check_op(rng, shape, 1e-5, **blocks)


@pytest.mark.parametrize("variant", ["tpu_interpret", "xla"])
@pytest.mark.parametrize("shape", [
    (2, 4, 2, 70, 37, 8),     # shorter than one TPU tile: the whole padded sequence as a block
    (1, 4, 2, 200, 150, 8),   # two TPU tiles each way, both ragged
])
def test_tpu_kernel_and_xla_form_equal_materialized_attention(rng, variant, shape):
  """The TPU kernel's layout (tiles of 128, lse and delta on 128 lanes, w2 from a flat SMEM
  array indexed by head), run in interpret mode, and the XLA form that ``implementation="auto"``
  runs on CPU: the same custom VJP, values and all six gradients."""
  _check_op(rng, shape, 1e-5, variant=variant)


def test_auto_on_cpu_is_the_xla_form_and_pallas_is_the_kernel(rng):
  """On this CPU, ``auto`` lowers to plain XLA ops (no kernel, no interpret loops) and
  ``pallas`` to the kernels in interpret mode (loops over their grids); for ``cuda`` both lower
  to Triton calls."""
  from deform3d.train.aot import module_facts
  args = _inputs(rng, 1, 2, 1, 20, 12, 8)
  for implementation, loops in (("auto", False), ("pallas", True)):
    fn = jax.jit(jax.grad(lambda *a: fused_attention.deformable_attention(
        *a, implementation=implementation).sum()))
    cpu = module_facts(fn.trace(*args).lower().as_text())
    assert (cpu.while_loops > 0) == loops and not any(cpu.kernels.values())
    cuda = module_facts(fn.trace(*args).lower(lowering_platforms=("cuda",)).as_text())
    assert cuda.kernels["triton"] == 3 and cuda.while_loops == 0  # forward, dq, dkv


def test_op_bfloat16_within_its_rounding(rng):
  # bfloat16 q, k, v (as the paper configs compute): the float32 softmax inside, the output and
  # gradients rounded to bfloat16 (8 bits of mantissa: 2^-8 = 0.4%).
  _check_op(rng, (2, 4, 2, 70, 37, 16), 2e-2, dtype=jnp.bfloat16, block_q=32, block_k=16)


@pytest.mark.slow
def test_op_at_paper_scale(rng):
  # ntu.py's first block: 3,152 queries (16 x 14 x 14 RGB tokens + 16 cross-modal tokens),
  # 408 keys (392 sampled + 16 cross-modal), 8 heads in 2 groups, 32 channels per head.
  _check_op(rng, (1, 8, 2, 3152, 408, 32), 1e-5)


def test_a_wrong_bias_would_be_seen(rng):
  """The check above can fail: a key position off by one tile in the bias changes the output."""
  q, k, v, hq, hk, w2 = _inputs(rng, 1, 2, 1, 20, 20, 4)
  out = jax.jit(lambda *a: fused_attention.deformable_attention(*a, block_q=16, block_k=16))(
      q, k, v, hq, hk, w2)
  wrong = jax.jit(fused_attention.reference)(q, k, v, hq, jnp.roll(hk, 1, axis=2), w2)
  assert rel_err(out, jax.jit(fused_attention.reference)(q, k, v, hq, hk, w2)) < 1e-5
  assert rel_err(out, wrong) > 1e-2


def test_op_shape_errors_name_the_arrays(rng):
  q, k, v, hq, hk, w2 = _inputs(rng, 1, 4, 2, 8, 6, 4)
  with pytest.raises(ValueError, match=r"key_hidden \(B, G, Nk, hidden\).*key_hidden \(1, 3"):
    fused_attention.deformable_attention(q, k, v, hq, jnp.zeros((1, 3, 6, 8)), w2)


def _block0_attention_call(model_config, shapes, batch):
  """The module settings and input shapes of block 0's deformable attention in the config's
  model, read by intercepting the call under ``jax.eval_shape`` (nothing is computed)."""
  model = build_model(model_config)
  frames = jax.ShapeDtypeStruct((batch,) + shapes["frames"], jnp.float32)
  keypoints = jax.ShapeDtypeStruct((batch,) + shapes["keypoints"], jnp.float32)
  seen = []

  def record(next_fun, args, kwargs, context):
    if (isinstance(context.module, DeformableAttention3D) and context.method_name == "__call__"
        and not seen):
      seen.append((context.module, args, kwargs))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    jax.eval_shape(model.init, jax.random.key(0), frames, keypoints)
  module, args, kwargs = seen[0]
  fields = ("num_heads", "num_groups", "offset_strides", "offset_range_factor", "rel_pos_hidden")
  return ({f: getattr(module, f) for f in fields},
          [None if a is None else (a.shape, a.dtype) for a in args],
          {k: v for k, v in kwargs.items() if k == "pool_queries"})


# The models with a deformable attention; the Kinect-pose NTU model is left out: it differs from
# the HRNet one in its joints only, which the deformable attention never reads.
RGB_CONFIGS = sorted(n for n, (m, _) in CONFIG_MODELS.items()
                     if m.get("use_rgb", True) and "pose=kinect" not in n)


@pytest.mark.slow
@pytest.mark.parametrize("name", RGB_CONFIGS)
def test_fused_module_equals_plain_at_every_configs_shapes(name):
  """Block 0's deformable attention of each config's model (the largest: before any temporal
  merge), at the config's full input size, batch 1."""
  model_config, shapes = CONFIG_MODELS[name]
  fields, arg_shapes, kwargs = _block0_attention_call(model_config, shapes, 1)
  rng = np.random.default_rng(0)
  args = []
  for shape_dtype, positions in zip(arg_shapes, (False, True, False, False, True)):
    if shape_dtype is None:
      args.append(None)
    else:
      shape = shape_dtype[0]
      x = rng.uniform(-1, 1, shape) if positions else rng.standard_normal(shape)
      args.append(jnp.asarray(x, jnp.float32))
  args = tuple(args)
  plain, fused = DeformableAttention3D(**fields), FusedDeformableAttention3D(**fields)
  variables = perturbed(plain.init(jax.random.key(0), *args, **kwargs), rng)
  # Against the XLA form of the same algebra (``fast.py``: the position MLP's first layer applied
  # to query and key positions apart): what the kernel adds is its own summation order.
  assert_same_function(FastDeformableAttention3D(**fields), fused, variables, args, kwargs)
  # Against the plain form: at these sizes the split first layer alone moves the output by up
  # to 3e-5 of its largest value (the XLA rewrite differs from the plain form as much: measured
  # 2.8e-5 at the NTU shapes), so 1e-4 here.
  assert_same_function(plain, fused, variables, args, kwargs, tol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("design", ["paper", "pooled"])
def test_fused_model_equals_plain_model(rng, design):
  """The whole model: the paper's block with three persons (one absent in clip 1), and the
  earlier design (pooled queries, no context keys)."""
  config = dict(variant="tiny", num_classes=3, joint_window=3, joint_strides=(2, 1),
                drop_path=0.0, design=design)
  persons = 3 if design == "paper" else 1
  frames = jnp.asarray(rng.standard_normal((2, 4, 32, 32, 3)), jnp.float32)
  keypoints = rng.uniform(-1, 1, (2, persons, 4, 5, 3)).astype(np.float32)
  if persons > 1:
    keypoints[1, 1, ..., 2] = 0.0
  plain = build_model(dict(config, fast=False))
  fused = build_model(dict(config, attention_kernel="pallas"))
  assert fused.fused_attention
  abstract = jax.eval_shape(plain.init, jax.random.key(0), frames, keypoints)["params"]
  assert_same_function(plain, fused, {"params": random_params(abstract, rng)},
                       (frames, jnp.asarray(keypoints)))


def test_attention_maps_of_a_fused_model(rng):
  config = dict(variant="tiny", num_classes=3)
  frames = jnp.asarray(rng.standard_normal((1, 4, 32, 32, 3)), jnp.float32)
  keypoints = jnp.asarray(rng.uniform(-1, 1, (1, 4, 17, 3)), jnp.float32)
  xla, fused = build_model(config), build_model(dict(config, attention_kernel="pallas"))
  abstract = jax.eval_shape(xla.init, jax.random.key(0), frames, keypoints)["params"]
  variables = {"params": random_params(abstract, rng)}  # drawn: no init compile
  logits, maps = attention_maps(fused, variables, frames, keypoints)
  want_logits, want = attention_maps(xla, variables, frames, keypoints)
  assert "block0/cross_attn/attn/attention" in maps
  assert sorted(maps) == sorted(want)
  assert rel_err(logits, want_logits) < 1e-6


def test_bad_attention_kernel_settings_are_refused(rng):
  frames = jnp.zeros((1, 4, 32, 32, 3))
  keypoints = jnp.zeros((1, 4, 17, 3))
  for config, match in ((dict(attention_kernel="triton"), "attention_kernel must be one of"),
                        (dict(attention_kernel="pallas", fast=False), "set fast=True")):
    with pytest.raises(ValueError, match=match):  # raised while tracing: shapes suffice
      jax.eval_shape(build_model(dict(variant="tiny", num_classes=3, **config)).init,
                     jax.random.key(0), frames, keypoints)
  model = build_model(dict(variant="tiny", num_classes=3, attention_kernel="pallas",
                           attn_dropout=0.1))
  variables = jax.eval_shape(model.init, jax.random.key(0), frames, keypoints)
  with pytest.raises(ValueError, match="no attention dropout"):
    jax.eval_shape(lambda v: model.apply(v, frames, keypoints, train=True,
                                         rngs={"dropout": jax.random.key(1)}), variables)
  # "auto": the fused op (which picks the kernel per platform when lowered), but the XLA
  # modules where the kernel cannot serve (no fast path; dropout inside the attention).
  auto = dict(variant="tiny", num_classes=3, attention_kernel="auto")
  assert build_model(auto).fused_attention
  assert not build_model(dict(auto, fast=False)).fused_attention
  assert not build_model(dict(auto, attn_dropout=0.1)).fused_attention
  with pytest.raises(ValueError, match="implementation must be one of"):
    fused_attention.deformable_attention(*_inputs(rng, 1, 2, 1, 8, 6, 4),
                                         implementation="triton")
