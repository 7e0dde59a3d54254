"""Trilinear sampling of channels-last 3-D volumes (torch ``grid_sample`` semantics).

``grid_sample_3d`` is the JAX counterpart of ``torch.nn.functional.grid_sample`` on 5-D input
with ``mode="bilinear"`` (which torch performs trilinearly on volumes), written channels-last:

* ``volume``: ``(N, D, H, W, C)``
* ``grid``:   ``(N, *S, 3)``, normalized ``(x, y, z)`` coordinates; ``x`` indexes ``W``, ``y``
  indexes ``H`` and ``z`` indexes ``D``, exactly as in torch. ``-1`` and ``+1`` are the centres of
  the extreme voxels when ``align_corners=True`` and their outer edges when ``align_corners=False``.
* returns ``(N, *S, C)``.

The implementation flattens the volume to ``(N * D * H * W, C)`` and reads the 8 corners of each
sampling point with one ``jnp.take`` each, weighting them by their trilinear weights. Out-of-range
corners contribute zero (``padding_mode="zeros"``) or coordinates are clamped to the volume
(``padding_mode="border"``). It is jit-, vmap- and grad-able in both ``volume`` and ``grid``.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

_PADDING_MODES = ("zeros", "border")


def _unnormalize(coord: jax.Array, size: int, align_corners: bool) -> jax.Array:
  """Maps normalized [-1, 1] coordinates to voxel index space (torch convention)."""
  if align_corners:
    return (coord + 1.0) * 0.5 * (size - 1)
  return ((coord + 1.0) * size - 1.0) * 0.5


def _corners(shape, grid, align_corners: bool, padding_mode: str):
  """Flat voxel indices ``(N, P, 8)`` (within each batch item) and trilinear weights ``(N, P, 8)``
  of the 8 corners of every sampling point; out-of-range corners get weight 0 (index clamped)."""
  n, d, h, w, _ = shape
  coord_dtype = jnp.promote_types(grid.dtype, jnp.float32)
  g = grid.reshape(n, -1, 3).astype(coord_dtype)
  ix = _unnormalize(g[..., 0], w, align_corners)
  iy = _unnormalize(g[..., 1], h, align_corners)
  iz = _unnormalize(g[..., 2], d, align_corners)
  if padding_mode == "border":
    ix = jnp.clip(ix, 0.0, w - 1)
    iy = jnp.clip(iy, 0.0, h - 1)
    iz = jnp.clip(iz, 0.0, d - 1)
  x0, y0, z0 = jnp.floor(ix), jnp.floor(iy), jnp.floor(iz)
  # Fractional parts carry the gradient w.r.t. the grid; floor itself has none.
  fx, fy, fz = ix - x0, iy - y0, iz - z0
  x0, y0, z0 = x0.astype(jnp.int32), y0.astype(jnp.int32), z0.astype(jnp.int32)
  idx, wts = [], []
  for dz in (0, 1):
    zi, wz = z0 + dz, (fz if dz else 1.0 - fz)
    for dy in (0, 1):
      yi, wy = y0 + dy, (fy if dy else 1.0 - fy)
      for dx in (0, 1):
        xi, wx = x0 + dx, (fx if dx else 1.0 - fx)
        valid = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h) & (zi >= 0) & (zi < d)
        idx.append((jnp.clip(zi, 0, d - 1) * h + jnp.clip(yi, 0, h - 1)) * w
                   + jnp.clip(xi, 0, w - 1))
        wts.append(jnp.where(valid, wx * wy * wz, 0.0))
  return jnp.stack(idx, -1), jnp.stack(wts, -1)


def _sample(volume, grid, align_corners: bool, padding_mode: str):
  n, d, h, w, c = volume.shape
  idx, wts = _corners(volume.shape, grid, align_corners, padding_mode)
  flat = volume.reshape(n * d * h * w, c)
  idx = idx + (jnp.arange(n, dtype=jnp.int32) * (d * h * w))[:, None, None]
  corners = jnp.take(flat, idx.reshape(-1), axis=0).reshape(idx.shape + (c,))  # (N, P, 8, C)
  out_dtype = jnp.promote_types(volume.dtype, wts.dtype)
  out = jnp.einsum("npkc,npk->npc", corners.astype(out_dtype), wts.astype(out_dtype),
                   precision=jax.lax.Precision.HIGHEST)
  return out.reshape((n,) + grid.shape[1:-1] + (c,)).astype(volume.dtype)


def _volume_grad(shape, dtype, idx, wts, cot, backward: str):
  """Transpose of the corner gather, ``(N, D, H, W, C)``, without autodiff's scatter-add.

  ``onehot``: per batch item, ``onehot(idx)^T @ (w * cot)``: a dense matmul over the voxels
  (exact accumulation at HIGHEST precision; memory ``N * 8P * DHW``, for small volumes).
  ``sorted``: indices sorted once, then ``segment_sum(..., indices_are_sorted=True)``.
  """
  n, d, h, w, c = shape
  v = d * h * w
  vals = wts[..., None].astype(cot.dtype) * cot[:, :, None, :]  # (N, P, 8, C)
  vals = vals.reshape(n, -1, c)
  idx = idx.reshape(n, -1)
  if backward == "onehot":
    onehot = (idx[..., None] == jnp.arange(v, dtype=idx.dtype)).astype(cot.dtype)  # (N, 8P, V)
    grad = jnp.einsum("nmv,nmc->nvc", onehot, vals, precision=jax.lax.Precision.HIGHEST)
  else:
    flat_idx = (idx + (jnp.arange(n, dtype=idx.dtype) * v)[:, None]).reshape(-1)
    order = jnp.argsort(flat_idx)
    grad = jax.ops.segment_sum(vals.reshape(-1, c)[order], flat_idx[order], num_segments=n * v,
                               indices_are_sorted=True)
  return grad.reshape(shape).astype(dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _sample_custom_vjp(volume, grid, align_corners, padding_mode, backward):
  return _sample(volume, grid, align_corners, padding_mode)


def _sample_fwd(volume, grid, align_corners, padding_mode, backward):
  return _sample(volume, grid, align_corners, padding_mode), (volume, grid)


def _sample_bwd(align_corners, padding_mode, backward, residuals, cot):
  volume, grid = residuals
  n, c = volume.shape[0], volume.shape[-1]
  # Grid gradient: autodiff with the volume held constant (flows through the weights only).
  _, grid_vjp = jax.vjp(lambda g: _sample(volume, g, align_corners, padding_mode), grid)
  (dgrid,) = grid_vjp(cot)
  idx, wts = _corners(volume.shape, grid, align_corners, padding_mode)
  cot = cot.reshape(n, -1, c).astype(jnp.promote_types(cot.dtype, wts.dtype))
  dvol = _volume_grad(volume.shape, volume.dtype, idx, wts, cot, backward)
  return dvol, dgrid


_sample_custom_vjp.defvjp(_sample_fwd, _sample_bwd)

BACKWARDS = ("autodiff", "onehot", "sorted")
# ``backward="auto"``: the variant measured fastest on each backend (docs/experiments/
# 2026-11-24-sampler-backward, 2026-11-25-h100). On the 2-core CPU and on an H100 (jaxlib
# 0.11.2) that is autodiff's scatter-add, alone and in the paper-scale training step; the slow
# GPU scatter-add reported for jaxlib 0.10.2-0.11.0 did not show there. A backend where it does
# gets its entry here. Backends not listed (TPU: not measured) use autodiff.
AUTO_BACKWARD = {"cpu": "autodiff", "gpu": "autodiff"}


def resolve_backward(backward: str, platform: str | None = None) -> str:
  """``backward`` itself, or for ``"auto"`` the variant of ``AUTO_BACKWARD`` for ``platform``
  (default: JAX's default backend, as seen when the caller is traced)."""
  if backward == "auto":
    return AUTO_BACKWARD.get(platform or jax.default_backend(), "autodiff")
  if backward not in BACKWARDS:
    raise ValueError(f"grid_sample_3d: backward must be one of {BACKWARDS + ('auto',)}, got "
                     f"{backward!r}")
  return backward


@functools.partial(jax.jit, static_argnames=("align_corners", "padding_mode", "backward"))
def grid_sample_3d(volume: jax.Array, grid: jax.Array, *, align_corners: bool = False,
                   padding_mode: str = "zeros", backward: str = "autodiff") -> jax.Array:
  """Samples ``volume`` (N, D, H, W, C) trilinearly at ``grid`` (N, ..., 3) -> (N, ..., C).

  Args:
    volume: channels-last volume ``(N, D, H, W, C)``, any float dtype.
    grid: normalized sampling locations ``(N, *S, 3)`` ordered ``(x, y, z)``.
    align_corners: torch's ``align_corners`` flag.
    padding_mode: ``"zeros"`` or ``"border"``.
    backward: how the gradient w.r.t. ``volume`` is formed. ``"autodiff"``: JAX's transpose
      of the gather (a scatter-add). ``"onehot"``: a one-hot matmul per batch item (small
      volumes). ``"sorted"``: a sorted segment sum. All three give the same values (tested);
      the grid gradient is always autodiff's. ``"auto"``: the one of ``AUTO_BACKWARD`` for the
      default backend.

  Returns:
    ``(N, *S, C)`` samples in ``volume.dtype``. Coordinates and weights are computed in the
    wider of ``grid.dtype`` and float32.
  """
  if volume.ndim != 5:
    raise ValueError(f"grid_sample_3d: volume must be (N, D, H, W, C), got shape {volume.shape}")
  if grid.ndim < 2 or grid.shape[-1] != 3:
    raise ValueError(f"grid_sample_3d: grid must be (N, ..., 3), got shape {grid.shape}")
  if grid.shape[0] != volume.shape[0]:
    raise ValueError(f"grid_sample_3d: batch of grid {grid.shape} != batch of volume {volume.shape}")
  if padding_mode not in _PADDING_MODES:
    raise ValueError(f"grid_sample_3d: padding_mode must be one of {_PADDING_MODES}, "
                     f"got {padding_mode!r}")
  backward = resolve_backward(backward)
  if backward == "autodiff":
    return _sample(volume, grid, align_corners, padding_mode)
  return _sample_custom_vjp(volume, grid, align_corners, padding_mode, backward)
