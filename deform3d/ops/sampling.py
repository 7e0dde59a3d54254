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


@functools.partial(jax.jit, static_argnames=("align_corners", "padding_mode"))
def grid_sample_3d(volume: jax.Array, grid: jax.Array, *, align_corners: bool = False,
                   padding_mode: str = "zeros") -> jax.Array:
  """Samples ``volume`` (N, D, H, W, C) trilinearly at ``grid`` (N, ..., 3) -> (N, ..., C).

  Args:
    volume: channels-last volume ``(N, D, H, W, C)``, any float dtype.
    grid: normalized sampling locations ``(N, *S, 3)`` ordered ``(x, y, z)``.
    align_corners: torch's ``align_corners`` flag.
    padding_mode: ``"zeros"`` or ``"border"``.

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
  n, d, h, w, c = volume.shape
  spatial = grid.shape[1:-1]
  coord_dtype = jnp.promote_types(grid.dtype, jnp.float32)
  g = grid.reshape(n, -1, 3).astype(coord_dtype)

  ix = _unnormalize(g[..., 0], w, align_corners)
  iy = _unnormalize(g[..., 1], h, align_corners)
  iz = _unnormalize(g[..., 2], d, align_corners)
  if padding_mode == "border":
    ix = jnp.clip(ix, 0.0, w - 1)
    iy = jnp.clip(iy, 0.0, h - 1)
    iz = jnp.clip(iz, 0.0, d - 1)

  x0 = jnp.floor(ix)
  y0 = jnp.floor(iy)
  z0 = jnp.floor(iz)
  # Fractional parts carry the gradient w.r.t. the grid; floor itself has none.
  fx, fy, fz = ix - x0, iy - y0, iz - z0
  x0 = x0.astype(jnp.int32)
  y0 = y0.astype(jnp.int32)
  z0 = z0.astype(jnp.int32)

  flat = volume.reshape(n * d * h * w, c)
  batch_base = (jnp.arange(n, dtype=jnp.int32) * (d * h * w))[:, None]
  out = jnp.zeros(g.shape[:2] + (c,), dtype=jnp.promote_types(volume.dtype, coord_dtype))
  for dz in (0, 1):
    zi = z0 + dz
    wz = fz if dz else 1.0 - fz
    for dy in (0, 1):
      yi = y0 + dy
      wy = fy if dy else 1.0 - fy
      for dx in (0, 1):
        xi = x0 + dx
        wx = fx if dx else 1.0 - fx
        valid = ((xi >= 0) & (xi < w) & (yi >= 0) & (yi < h) & (zi >= 0) & (zi < d))
        idx = ((jnp.clip(zi, 0, d - 1) * h + jnp.clip(yi, 0, h - 1)) * w
               + jnp.clip(xi, 0, w - 1)) + batch_base
        weight = jnp.where(valid, wx * wy * wz, 0.0)
        corner = jnp.take(flat, idx.reshape(-1), axis=0).reshape(idx.shape + (c,))
        out = out + corner * weight[..., None].astype(out.dtype)
  return out.reshape((n,) + spatial + (c,)).astype(volume.dtype)
