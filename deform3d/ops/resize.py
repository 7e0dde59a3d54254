"""The input pipeline's crop resize, done on the accelerator (``dataset.resize="device"``).

The host then only decodes and crops: each clip's square crop of ``crop`` pixels arrives as
uint8 in the top-left corner of a ``pad x pad`` frame (zeros elsewhere), and ``resize_crops``
maps it to ``out x out`` pixels inside the jitted step (mirrored where the host drew a flip),
with the filter that ``tf.image.resize(..., antialias=True)`` applies on the host
(``resize="host"``): a triangle (bilinear) kernel on half-pixel centres, widened by ``crop /
out`` when shrinking, its weights renormalized over the pixels inside the crop. Separable: two
matrix products with one weight matrix per clip (non-zero near its diagonal), so XLA batches
them over clips of different crop sizes.

Measured against TensorFlow's resize in ``tests/test_resize.py``; the values are the host
pipeline's float pixels before its rounding to uint8 (so within half a level of its uint8
frames, docs/data.md).
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp


def weights(crop: jnp.ndarray, pad: int, out: int) -> jnp.ndarray:
  """Resize weights ``(B, out, pad)`` for crops of ``crop (B,)`` pixels: row ``i`` holds the
  weights of input pixels ``0 .. crop - 1`` for output pixel ``i`` (zero beyond the crop)."""
  # At least one pixel: padding examples (all zeros, crop 0) stay finite.
  size = jnp.maximum(jnp.asarray(crop, jnp.float32), 1.0)[:, None, None]   # (B, 1, 1)
  ratio = size / out                                             # input pixels per output pixel
  width = jnp.maximum(ratio, 1.0)                                # the kernel widens when shrinking
  centre = (jnp.arange(out, dtype=jnp.float32)[None, :, None] + 0.5) * ratio   # (B, out, 1)
  pixel = jnp.arange(pad, dtype=jnp.float32)[None, None, :] + 0.5               # (1, 1, pad)
  w = jnp.maximum(0.0, 1.0 - jnp.abs(pixel - centre) / width)
  w = jnp.where(pixel < size, w, 0.0)
  return w / jnp.sum(w, axis=-1, keepdims=True)


def resize_crops(frames: jnp.ndarray, crop: jnp.ndarray, out: int,
                 flip: Optional[jnp.ndarray] = None) -> jnp.ndarray:
  """Padded crops ``(B, ..., pad, pad, C)`` (any dtype), crop sizes ``(B,)`` -> float32
  ``(B, ..., out, out, C)`` pixels; ``flip (B,)`` (bool) mirrors those examples left to right,
  for free: their width weights are the rows of the others in reverse order."""
  b, pad = frames.shape[0], frames.shape[-2]
  if frames.shape[-3] != pad:
    raise ValueError(f"resize_crops: frames must be square padded crops (..., pad, pad, C), "
                     f"got {frames.shape}")
  w = weights(crop, pad, out)
  wx = w if flip is None else jnp.where(jnp.asarray(flip)[:, None, None], w[:, ::-1], w)
  x = frames.astype(jnp.float32).reshape((b, -1) + frames.shape[-3:])  # (B, N, pad, pad, C)
  hi = jax.lax.Precision.HIGHEST
  x = jnp.einsum("bip,bnpqc->bniqc", w, x, precision=hi)
  x = jnp.einsum("bjq,bniqc->bnijc", wx, x, precision=hi)
  return x.reshape(frames.shape[:-3] + (out, out, frames.shape[-1]))
