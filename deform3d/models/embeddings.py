"""Token embeddings of the two modalities: the RGB conv stem and the pose (joint) embedding."""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from deform3d.models.layers import layer_norm

Dtype = Any


def pad_frames(x, multiple: int):
  """Pads axis 1 to a multiple of ``multiple`` by repeating the last frame."""
  pad = (-x.shape[1]) % multiple
  if not pad:
    return x
  return jnp.concatenate([x, jnp.repeat(x[:, -1:], pad, axis=1)], axis=1)


def temporal_pool(x, stride: int):
  """Averages ``stride`` consecutive frames along axis 1 (pads by repeating the last frame)."""
  if stride == 1:
    return x
  x = pad_frames(x, stride)
  x = x.reshape((x.shape[0], x.shape[1] // stride, stride) + x.shape[2:])
  return x.mean(axis=2)


def patchify(x, pt: int, ph: int, pw: int):
  """``(B, T, H, W, C)`` -> ``(B, T/pt, H/ph, W/pw, pt*ph*pw*C)`` non-overlapping patches.

  A convolution whose kernel equals its stride is exactly this reshape followed by a Dense layer;
  written this way its backward pass is a matmul on every backend (XLA:CPU's strided conv3d
  backprop is an order of magnitude slower).
  """
  b, t, h, w, c = x.shape
  if t % pt or h % ph or w % pw:
    raise ValueError(f"patchify: input (T, H, W) = {(t, h, w)} is not divisible by the patch "
                     f"{(pt, ph, pw)}")
  x = x.reshape(b, t // pt, pt, h // ph, ph, w // pw, pw, c)
  x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7)
  return x.reshape(b, t // pt, h // ph, w // pw, pt * ph * pw * c)


def input_sized_param(module: nn.Module, name: str, shape, what: str, got):
  """``module.param(name)`` (normal(0.02) init) whose ``shape`` follows from the input; a later
  input of another size gets a ``ValueError`` saying what differs instead of flax's shape
  error. ``what`` names axis 0's unit, ``got`` the input's shape for the message."""
  if module.has_variable("params", name):
    have = tuple(module.get_variable("params", name).shape)
    if have != tuple(shape):
      raise ValueError(f"{type(module).__name__}: the parameters were made for {have} "
                       f"{what}, this input {got} gives {tuple(shape)} (parameter {name!r}); "
                       "the model takes its sizes from the data it was initialised with")
  return module.param(name, nn.initializers.normal(0.02), shape)


class RGBStem(nn.Module):
  """Frames ``(B, T, H, W, 3)`` -> RGB token volume ``(B, T', H', W', C)``.

  Two patchify convolutions (kernel = stride): spatial ``s1 x s1`` to ``C/2`` channels, LayerNorm,
  GELU, then ``temporal_stride x s2 x s2`` to ``C`` channels and LayerNorm; then factorized
  learned position embeddings over (time, height, width). ``H`` and ``W`` must be divisible by
  ``s1 * s2`` and ``T`` by ``temporal_stride``.
  """
  embed_dim: int
  spatial_strides: Sequence[int] = (4, 2)
  temporal_stride: int = 1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, frames):
    if frames.ndim != 5 or frames.shape[-1] != 3:
      raise ValueError(f"RGBStem: frames must be (B, T, H, W, 3), got {frames.shape}")
    s1, s2 = self.spatial_strides
    x = patchify(frames.astype(self.dtype), 1, s1, s1)
    x = nn.Dense(self.embed_dim // 2, dtype=self.dtype, name="conv1")(x)
    x = nn.gelu(layer_norm("norm1", self.dtype)(x))
    x = patchify(x, self.temporal_stride, s2, s2)
    x = nn.Dense(self.embed_dim, dtype=self.dtype, name="conv2")(x)
    x = layer_norm("norm2", self.dtype)(x)
    _, t, h, w, c = x.shape
    what = "(time, height, width) token positions"
    pos_t = input_sized_param(self, "pos_t", (t, 1, 1, c), what, frames.shape)
    pos_h = input_sized_param(self, "pos_h", (1, h, 1, c), what, frames.shape)
    pos_w = input_sized_param(self, "pos_w", (1, 1, w, c), what, frames.shape)
    return x + (pos_t + pos_h + pos_w).astype(self.dtype)


def pose_features(keypoints, normalize: bool = False):
  """``(B, T, J, D)`` -> ``(B, T, J, D + 4)``: the input, the ``(x, y)`` offset from the body
  centre (mean of the joints with a non-zero score, or of all joints when ``D == 2``), and the
  frame-to-frame motion of that offset (zero at the first frame). Missing joints get zeros.

  ``normalize=True`` (ours) divides the offset and the motion by the clip's body size: the RMS
  offset over the clip's present joints and frames, one number per clip, so that a body shrinking
  within the clip (a bow) still shows. In image coordinates they are small (RMS about 0.2 and
  0.05 on the embedded data, against 0.8 for the score), and a motion cue would start out
  nearly invisible in the tokens.
  """
  xy = keypoints[..., :2]
  if keypoints.shape[-1] > 2:
    present = (keypoints[..., 2:3] > 0).astype(keypoints.dtype)
  else:
    present = jnp.ones_like(xy[..., :1])
  count = jnp.maximum(present.sum(axis=2, keepdims=True), 1.0)
  centre = (xy * present).sum(axis=2, keepdims=True) / count
  rel = (xy - centre) * present
  motion = jnp.concatenate([jnp.zeros_like(rel[:, :1]), rel[:, 1:] - rel[:, :-1]], axis=1)
  motion = motion * present * jnp.concatenate([jnp.zeros_like(present[:, :1]), present[:, :-1]],
                                              axis=1)
  if normalize:
    n = jnp.maximum(present.sum(axis=(1, 2), keepdims=True), 1.0)
    power = (rel ** 2).sum(axis=(1, 2, 3), keepdims=True) / n  # (B, 1, 1, 1)
    # A clip with no present joint (an absent second person) has size 0: divide by 1 there, and
    # take the root of 1, not 0, so that its gradient (infinite at 0) does not make NaN.
    size = jnp.sqrt(jnp.where(power > 0, power, 1.0))
    rel, motion = rel / size, motion / size
  return jnp.concatenate([keypoints, rel, motion], axis=-1)


class PoseEmbed(nn.Module):
  """Keypoints ``(B, T, J, D)`` -> pose tokens ``(B, T', J, C)``; of ``P > 1`` persons,
  ``(B, P, T, J, D)`` -> ``(B, T', P * J, C)`` (person by person).

  A two-layer MLP on each joint's features (``pose_features`` of each person: coordinates,
  score, offset from that person's centre and its motion) plus learned joint-identity and time
  embeddings and, with ``P > 1``, a learned person embedding (ours), whose sizes ``J``, ``T'`` and
  ``P`` are taken from the keypoints at initialisation. With ``use_coords=False`` (RGB-only
  ablation) the tokens are the learned embeddings alone, so no pose information enters the model.
  ``normalize=True`` (ours): the features' offsets and motion in units of the clip's body size
  (``pose_features``) and a LayerNorm (``coord_norm``) on the MLP's output, so that the pose
  tokens start at the scale of the RGB stem's LayerNormed tokens.
  """
  embed_dim: int
  temporal_stride: int = 1
  use_coords: bool = True
  normalize: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, keypoints):
    persons = keypoints.shape[1] if keypoints.ndim == 5 else 1
    b, t, j = keypoints.shape[0], keypoints.shape[-3], keypoints.shape[-2]
    t_out = -(-t // self.temporal_stride)
    joint_embed = input_sized_param(self, "joint_embed", (j, self.embed_dim), "(joints, C)",
                                    keypoints.shape)
    time_embed = input_sized_param(self, "time_embed", (t_out, 1, self.embed_dim),
                                   "(frames after the stem stride, 1, C)", keypoints.shape)
    tokens = joint_embed[None] + time_embed                                 # (T', J, C)
    if persons > 1:
      person_embed = input_sized_param(self, "person_embed", (persons, 1, self.embed_dim),
                                       "(persons, 1, C)", keypoints.shape)
      tokens = (tokens[:, None] + person_embed[None]).reshape(t_out, persons * j, self.embed_dim)
    tokens = jnp.broadcast_to(tokens.astype(self.dtype), (b,) + tokens.shape)
    if self.use_coords:
      kp = keypoints.astype(jnp.float32)
      if persons > 1:  # each person's features, then persons next to each other per frame
        x = pose_features(kp.reshape((b * persons,) + kp.shape[2:]), self.normalize)
        x = temporal_pool(x, self.temporal_stride)
        x = x.reshape((b, persons) + x.shape[1:]).transpose(0, 2, 1, 3, 4)
        x = x.reshape(x.shape[:2] + (persons * j, x.shape[-1]))
      else:
        x = temporal_pool(pose_features(kp, self.normalize), self.temporal_stride)
      x = nn.Dense(self.embed_dim, dtype=self.dtype, name="coord_fc1")(x.astype(self.dtype))
      x = nn.Dense(self.embed_dim, dtype=self.dtype, name="coord_fc2")(nn.gelu(x))
      if self.normalize:
        x = layer_norm("coord_norm", self.dtype)(x)
      tokens = tokens + x
    return tokens
