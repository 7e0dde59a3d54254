"""The cross-modal 3D deformable transformer (Kim, Ahn, Ko, ICCV 2023)."""
from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from deform3d.models.deformable import DeformableAttention3D, cell_centres
from deform3d.models.embeddings import PoseEmbed, RGBStem, temporal_pool
from deform3d.models.layers import DropPath, Mlp, layer_norm, standardize
from deform3d.models.stride_attention import (JointStrideAttention, TemporalMerge,
                                              TemporalStrideAttention)

Dtype = Any


class Deform3DBlock(nn.Module):
  """One block: deformable cross-attention, joint stride, temporal stride attention, MLP.

  ``z (B, T, 1 + J, C)``, ``pos (B, T, 1 + J, 3)``, ``volume (B, T', H', W', C)`` or ``None``
  (pose-only) -> ``z``, ``pos`` with ``T`` reduced by ``temporal_stride``. ``volume`` is the
  standardized RGB volume (``deformable.standardize`` of the stem's output, computed once for
  all blocks); each block's deformable attention applies its own LayerNorm scale and bias.
  """
  num_heads: int
  num_groups: int
  offset_strides: Sequence[int]
  offset_range_factor: float
  joint_window: int
  joint_stride: int
  temporal_window: int
  temporal_stride: int
  mlp_ratio: float
  dropout: float
  attn_dropout: float
  drop_path: float
  layer_scale: float
  dtype: Dtype

  @nn.compact
  def __call__(self, z, pos, volume, *, deterministic: bool = True):
    kw = dict(attn_dropout=self.attn_dropout, proj_dropout=self.dropout, dtype=self.dtype)
    c = z.shape[-1]

    def drop(name):
      """Residual branch: per-channel LayerScale (CaiT) then drop path."""
      path = DropPath(self.drop_path, name=name)
      if not self.layer_scale:
        return path
      gamma = self.param(f"{name}_scale", nn.initializers.constant(self.layer_scale), (c,))
      return lambda y, deterministic: path(y * gamma.astype(y.dtype), deterministic=deterministic)

    b, t, n, _ = z.shape
    if volume is not None:
      q = layer_norm("norm_cross", self.dtype)(z).reshape(b, t * n, c)
      y = DeformableAttention3D(self.num_heads, num_groups=self.num_groups,
                                offset_strides=self.offset_strides,
                                offset_range_factor=self.offset_range_factor, name="cross_attn",
                                **kw)(q, pos.reshape(b, t * n, 3), volume,
                                      pool_queries=n, standardized=True,
                                      deterministic=deterministic)
      # The frame's cross-attention token: mean of the outputs of its cross and joint queries
      # (each joint query looks around its own location), pooled inside the attention.
      # Joint tokens stay pose tokens.
      y = y.reshape(b, t, 1, -1)
      y = drop("drop_cross")(y, deterministic=deterministic)
      z = jnp.concatenate([z[:, :, :1] + y, z[:, :, 1:]], axis=2)
    y = JointStrideAttention(self.num_heads, window=self.joint_window, stride=self.joint_stride,
                             name="joint_attn", **kw)(layer_norm("norm_joint", self.dtype)(z),
                                                      deterministic=deterministic)
    z = z + drop("drop_joint")(y, deterministic=deterministic)
    y = TemporalStrideAttention(self.num_heads, window=self.temporal_window, name="temporal_attn",
                                **kw)(layer_norm("norm_temporal", self.dtype)(z),
                                      deterministic=deterministic)
    z = z + drop("drop_temporal")(y, deterministic=deterministic)
    z, pos = TemporalMerge(self.temporal_stride, dtype=self.dtype, name="temporal_merge")(z, pos)
    y = Mlp(int(c * self.mlp_ratio), dropout=self.dropout, dtype=self.dtype,
            name="mlp")(layer_norm("norm_mlp", self.dtype)(z), deterministic=deterministic)
    z = z + drop("drop_mlp")(y, deterministic=deterministic)
    return z, pos


class Deform3DTransformer(nn.Module):
  """RGB frames + pose keypoints -> class logits.

  Inputs: ``frames (B, T, H, W, 3)`` (float, normalized) and ``keypoints (B, T, J, D)`` whose first
  two channels are ``(x, y)`` in normalized image coordinates ``[-1, 1]`` (further channels, e.g.
  a confidence score, are embedded too). Either modality can be switched off for ablations
  (``use_rgb=False`` ignores ``frames``; ``use_pose=False`` ignores ``keypoints``' values).

  Token layout: per frame one learned cross-modal token followed by the ``J`` joint tokens. The
  cross tokens of the last block, averaged over time, feed the classifier.

  Every attention sows its weights into ``intermediates`` (see ``deform3d.models.attention_maps``).
  """
  num_classes: int
  num_frames: int
  num_joints: int
  embed_dim: int = 64
  depth: int = 4
  num_heads: int = 4
  mlp_ratio: float = 2.0
  stem_strides: Sequence[int] = (4, 2)
  stem_temporal_stride: int = 1
  num_groups: int = 2
  offset_strides: Sequence[int] = (2, 2, 2)
  offset_range_factor: float = 2.0
  joint_window: int = 4
  joint_strides: Sequence[int] = (1, 2, 1, 2)
  temporal_window: int = 4
  temporal_strides: Sequence[int] = (1, 2, 1, 2)
  dropout: float = 0.0
  attn_dropout: float = 0.0
  drop_path: float = 0.1
  layer_scale: float = 0.1
  use_rgb: bool = True
  use_pose: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, frames: Optional[jnp.ndarray], keypoints: Optional[jnp.ndarray], *,
               train: bool = False):
    if not (self.use_rgb or self.use_pose):
      raise ValueError("Deform3DTransformer: at least one of use_rgb / use_pose must be True")
    for name, seq in (("joint_strides", self.joint_strides),
                      ("temporal_strides", self.temporal_strides)):
      if len(seq) != self.depth:
        raise ValueError(f"Deform3DTransformer: {name} has {len(seq)} entries, depth is "
                         f"{self.depth}")
    deterministic = not train
    ref = frames if self.use_rgb else keypoints
    if ref is None:
      raise ValueError("Deform3DTransformer: frames are required with use_rgb=True and "
                       "keypoints with use_rgb=False")
    b = ref.shape[0]
    c = self.embed_dim

    volume = None
    if self.use_rgb:
      if frames.shape[1] != self.num_frames:
        raise ValueError(f"Deform3DTransformer: frames must have T={self.num_frames} frames, got "
                         f"shape {frames.shape}")
      volume = RGBStem(c, spatial_strides=self.stem_strides,
                       temporal_stride=self.stem_temporal_stride, dtype=self.dtype,
                       name="rgb_stem")(frames)
    pose_tokens = PoseEmbed(c, self.num_joints, self.num_frames,
                            temporal_stride=self.stem_temporal_stride, use_coords=self.use_pose,
                            dtype=self.dtype, name="pose_embed")(keypoints, b)
    t = pose_tokens.shape[1]
    cross = self.param("cross_token", nn.initializers.normal(0.02), (1, 1, 1, c))
    cross = jnp.broadcast_to(cross.astype(self.dtype), (b, t, 1, c))
    if volume is not None:
      # Each frame's cross-modal token starts from that frame's pooled RGB tokens (mean and max
      # over space), so small salient objects reach the fusion token from the first step.
      pooled = jnp.concatenate([volume.mean(axis=(2, 3)), volume.max(axis=(2, 3))], axis=-1)
      cross = cross + nn.Dense(c, dtype=self.dtype, name="cross_init")(pooled)[:, :, None]
    z = jnp.concatenate([cross, pose_tokens], axis=2)

    # Query positions (x, y, z=time) used by the deformable attention's relative position bias.
    time = jnp.broadcast_to(cell_centres(t)[None, :, None, None], (b, t, 1 + self.num_joints, 1))
    xy = jnp.zeros((b, t, 1 + self.num_joints, 2), jnp.float32)
    if self.use_pose:
      joints_xy = temporal_pool(keypoints[..., :2].astype(jnp.float32), self.stem_temporal_stride)
      xy = xy.at[:, :, 1:].set(jnp.clip(joints_xy, -1.0, 1.0))
    pos = jnp.concatenate([xy, time], axis=-1)

    if volume is not None:
      volume = standardize(volume, self.dtype)
    for i in range(self.depth):
      rate = self.drop_path * i / max(self.depth - 1, 1)
      z, pos = Deform3DBlock(
          num_heads=self.num_heads, num_groups=self.num_groups,
          offset_strides=tuple(self.offset_strides), offset_range_factor=self.offset_range_factor,
          joint_window=self.joint_window, joint_stride=self.joint_strides[i],
          temporal_window=self.temporal_window, temporal_stride=self.temporal_strides[i],
          mlp_ratio=self.mlp_ratio, dropout=self.dropout, attn_dropout=self.attn_dropout,
          drop_path=rate, layer_scale=self.layer_scale, dtype=self.dtype, name=f"block{i}")(z, pos, volume,
                                                               deterministic=deterministic)

    cls = layer_norm("norm_out", self.dtype)(z[:, :, 0].mean(axis=1))
    cls = nn.Dropout(self.dropout)(cls, deterministic=deterministic)
    logits = nn.Dense(self.num_classes, dtype=jnp.float32, kernel_init=nn.initializers.zeros,
                      name="head")(cls)
    return logits
