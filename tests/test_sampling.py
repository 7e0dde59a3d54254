"""grid_sample_3d against an independent float64 NumPy reference and torch grid_sample."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deform3d.ops import grid_sample_3d
from deform3d.ops.sampling import AUTO_BACKWARD, BACKWARDS, resolve_backward

torch = pytest.importorskip("torch")


def rel_err(a, b):
  """Max absolute difference normalized by the reference's largest magnitude."""
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def numpy_reference(volume, grid, align_corners, padding_mode):
  """Point-by-point float64 trilinear interpolation written from the definition.

  Independent of the JAX code: loops over points and the 8 neighbours, reads voxels by
  explicit (b, z, y, x) indexing, and handles the padding rule per voxel.
  """
  volume = np.asarray(volume, np.float64)
  grid = np.asarray(grid, np.float64)
  n, d, h, w, c = volume.shape
  pts = grid.reshape(n, -1, 3)
  out = np.zeros((n, pts.shape[1], c))
  sizes = (w, h, d)
  for b in range(n):
    for p in range(pts.shape[1]):
      pos = []
      for axis in range(3):
        s, u = sizes[axis], pts[b, p, axis]
        v = (u + 1) / 2 * (s - 1) if align_corners else ((u + 1) * s - 1) / 2
        if padding_mode == "border":
          v = min(max(v, 0.0), s - 1.0)
        pos.append(v)
      base = [int(np.floor(v)) for v in pos]
      for corner in itertools.product((0, 1), repeat=3):
        xi, yi, zi = (base[k] + corner[k] for k in range(3))
        weight = 1.0
        for k in range(3):
          frac = pos[k] - base[k]
          weight *= frac if corner[k] else 1.0 - frac
        if 0 <= xi < w and 0 <= yi < h and 0 <= zi < d:
          out[b, p] += weight * volume[b, zi, yi, xi]
  return out.reshape(grid.shape[:-1] + (c,))


def torch_sample(volume, grid, align_corners, padding_mode):
  """torch grid_sample on channels-first 5-D input, returning channels-last output."""
  n, c = volume.shape[0], volume.shape[-1]
  vol_t = volume.permute(0, 4, 1, 2, 3)
  grid_t = grid.reshape(n, -1, 1, 1, 3)
  out = torch.nn.functional.grid_sample(vol_t, grid_t, mode="bilinear", padding_mode=padding_mode,
                                        align_corners=align_corners)
  return out.reshape(n, c, -1).permute(0, 2, 1).reshape(tuple(grid.shape[:-1]) + (c,))


def random_case(rng, dtype, extent=1.3):
  n = int(rng.integers(1, 4))
  d, h, w = (int(v) for v in rng.integers(1, 7, size=3))
  c = int(rng.integers(1, 5))
  spatial = tuple(int(v) for v in rng.integers(1, 5, size=int(rng.integers(1, 3))))
  volume = rng.standard_normal((n, d, h, w, c)).astype(dtype)
  # Points reach past [-1, 1] so that zeros/border padding is exercised.
  grid = rng.uniform(-extent, extent, size=(n,) + spatial + (3,)).astype(dtype)
  return volume, grid


CASES = list(itertools.product([False, True], ["zeros", "border"]))


@pytest.mark.parametrize("align_corners,padding_mode", CASES)
def test_matches_numpy_reference_float64(rng, align_corners, padding_mode):
  with jax.enable_x64(True):
    for _ in range(4):
      volume, grid = random_case(rng, np.float64)
      got = grid_sample_3d(jnp.asarray(volume), jnp.asarray(grid), align_corners=align_corners,
                           padding_mode=padding_mode)
      assert got.dtype == jnp.float64
      want = numpy_reference(volume, grid, align_corners, padding_mode)
      assert got.shape == want.shape
      assert rel_err(got, want) < 1e-12


@pytest.mark.parametrize("dtype,tol", [(np.float32, 1e-5), (np.float64, 1e-10)])
@pytest.mark.parametrize("align_corners,padding_mode", CASES)
def test_values_and_gradients_match_torch(rng, dtype, tol, align_corners, padding_mode):
  with jax.enable_x64(dtype == np.float64):
    for _ in range(3):
      volume, grid = random_case(rng, dtype)
      cot = rng.standard_normal(grid.shape[:-1] + (volume.shape[-1],)).astype(dtype)

      def loss(v, g):
        out = grid_sample_3d(v, g, align_corners=align_corners, padding_mode=padding_mode)
        return jnp.sum(out * cot), out

      (_, out), (dv, dg) = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(
          jnp.asarray(volume), jnp.asarray(grid))

      vt = torch.tensor(volume, requires_grad=True)
      gt = torch.tensor(grid, requires_grad=True)
      ot = torch_sample(vt, gt, align_corners, padding_mode)
      (ot * torch.tensor(cot)).sum().backward()

      assert rel_err(out, ot.detach().numpy()) < tol
      assert rel_err(dv, vt.grad.numpy()) < tol
      assert rel_err(dg, gt.grad.numpy()) < tol


def test_exact_voxel_centres_return_voxels(rng):
  """With align_corners=True, integer grid positions read voxels exactly."""
  volume = rng.standard_normal((2, 3, 4, 5, 2)).astype(np.float32)
  z, y, x = np.meshgrid(np.arange(3), np.arange(4), np.arange(5), indexing="ij")
  coords = np.stack([x / 4 * 2 - 1, y / 3 * 2 - 1, z / 2 * 2 - 1], -1).astype(np.float32)
  grid = np.broadcast_to(coords, (2,) + coords.shape)
  out = grid_sample_3d(jnp.asarray(volume), jnp.asarray(grid), align_corners=True)
  np.testing.assert_allclose(out, volume, rtol=1e-6, atol=1e-6)


def test_far_outside_points_are_zero_or_border(rng):
  volume = rng.standard_normal((1, 2, 3, 4, 3)).astype(np.float32)
  grid = np.array([[[5.0, 5.0, 5.0], [-7.0, -7.0, -7.0]]], np.float32)
  zeros = grid_sample_3d(jnp.asarray(volume), jnp.asarray(grid))
  np.testing.assert_array_equal(zeros, 0.0)
  border = grid_sample_3d(jnp.asarray(volume), jnp.asarray(grid), padding_mode="border")
  np.testing.assert_allclose(border[0, 0], volume[0, -1, -1, -1], rtol=1e-6)
  np.testing.assert_allclose(border[0, 1], volume[0, 0, 0, 0], rtol=1e-6)


def test_jit_and_vmap_agree_with_eager(rng):
  volume, grid = random_case(rng, np.float32)
  eager = grid_sample_3d(jnp.asarray(volume), jnp.asarray(grid))
  jitted = jax.jit(grid_sample_3d, static_argnames=("align_corners", "padding_mode"))(
      jnp.asarray(volume), jnp.asarray(grid))
  np.testing.assert_allclose(jitted, eager, rtol=1e-6, atol=1e-6)
  # vmap over an extra leading axis: stack two problems.
  vols = jnp.stack([volume, volume * 2])
  grids = jnp.stack([grid, -grid])
  mapped = jax.vmap(grid_sample_3d)(vols, grids)
  np.testing.assert_allclose(mapped[0], eager, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(mapped[1], grid_sample_3d(vols[1], grids[1]), rtol=1e-6, atol=1e-6)


def test_bfloat16_volume_keeps_dtype(rng):
  volume, grid = random_case(rng, np.float32)
  out = grid_sample_3d(jnp.asarray(volume, jnp.bfloat16), jnp.asarray(grid))
  assert out.dtype == jnp.bfloat16
  ref = grid_sample_3d(jnp.asarray(volume), jnp.asarray(grid))
  assert rel_err(out.astype(jnp.float32), ref) < 2e-2


@pytest.mark.parametrize("volume_shape,grid_shape,mode,match", [
    ((2, 3, 4, 5), (2, 4, 3), "zeros", "volume must be"),
    ((2, 3, 4, 5, 1), (2, 4, 2), "zeros", "grid must be"),
    ((2, 3, 4, 5, 1), (3, 4, 3), "zeros", "batch of grid"),
    ((2, 3, 4, 5, 1), (2, 4, 3), "reflection", "padding_mode"),
])
def test_bad_arguments_raise(volume_shape, grid_shape, mode, match):
  with pytest.raises(ValueError, match=match):
    grid_sample_3d(jnp.zeros(volume_shape), jnp.zeros(grid_shape), padding_mode=mode)


@pytest.mark.slow
@pytest.mark.parametrize("backward", ["onehot", "sorted"])
@pytest.mark.parametrize("dtype,tol", [(np.float32, 1e-5), (np.float64, 1e-10)])
def test_custom_vjp_matches_autodiff_and_torch(rng, backward, dtype, tol):
  """Many points in a tiny volume: every voxel receives gradient from many colliding corners."""
  with jax.enable_x64(dtype == np.float64):
    for align_corners, padding_mode in CASES:
      n, c = 2, 3
      volume = rng.standard_normal((n, 2, 3, 4, c)).astype(dtype)
      grid = rng.uniform(-1.2, 1.2, size=(n, 50, 7, 3)).astype(dtype)
      cot = rng.standard_normal((n, 50, 7, c)).astype(dtype)

      def grads(mode):
        def loss(v, g):
          out = grid_sample_3d(v, g, align_corners=align_corners, padding_mode=padding_mode,
                               backward=mode)
          return jnp.sum(out * cot)
        return jax.jit(jax.grad(loss, argnums=(0, 1)))(jnp.asarray(volume), jnp.asarray(grid))

      (dv, dg), (dv_ad, dg_ad) = grads(backward), grads("autodiff")
      vt = torch.tensor(volume, requires_grad=True)
      gt = torch.tensor(grid, requires_grad=True)
      (torch_sample(vt, gt, align_corners, padding_mode) * torch.tensor(cot)).sum().backward()
      assert rel_err(dv, dv_ad) < tol
      assert rel_err(dv, vt.grad.numpy()) < tol
      assert rel_err(dg, dg_ad) < tol
      assert rel_err(dg, gt.grad.numpy()) < tol
      # Values are those of the plain path.
      out = grid_sample_3d(jnp.asarray(volume), jnp.asarray(grid), align_corners=align_corners,
                           padding_mode=padding_mode, backward=backward)
      ref = grid_sample_3d(jnp.asarray(volume), jnp.asarray(grid), align_corners=align_corners,
                           padding_mode=padding_mode)
      np.testing.assert_array_equal(out, ref)


def test_custom_vjp_under_vmap_and_bad_name(rng):
  volume = jnp.asarray(rng.standard_normal((3, 1, 2, 3, 4, 2)), jnp.float32)
  grid = jnp.asarray(rng.uniform(-1, 1, (3, 1, 5, 3)), jnp.float32)
  f = lambda mode: jax.grad(lambda v: jnp.sum(jax.vmap(
      lambda a, b: grid_sample_3d(a, b, backward=mode))(v, grid) ** 2))(volume)
  assert rel_err(f("sorted"), f("autodiff")) < 1e-5
  assert rel_err(f("onehot"), f("autodiff")) < 1e-5
  with pytest.raises(ValueError, match="backward must be one of"):
    grid_sample_3d(volume[0], grid[0], backward="scatter")


def test_auto_backward_follows_the_backend_table():
  assert resolve_backward("auto", "cpu") == AUTO_BACKWARD["cpu"] == "autodiff"
  assert resolve_backward("auto", "gpu") == AUTO_BACKWARD["gpu"]
  assert resolve_backward("auto", "tpu") == "autodiff"  # not measured: the default
  assert resolve_backward("sorted", "cpu") == "sorted"
  assert set(AUTO_BACKWARD.values()) <= set(BACKWARDS)
  with pytest.raises(ValueError, match="backward must be one of"):
    resolve_backward("scatter", "gpu")
