"""The blocks of the cross-modal 3D deformable transformer (Kim, Ahn, Ko, ICCV 2023), plain form.

``Block`` is the paper's block, ``PooledBlock`` the earlier design (ablation). ``model.py``
stacks them (a Python loop, or stages of ``nn.scan``); ``fast.py`` subclasses them with the
rewritten sub-layers. docs/model.md maps this code to the paper and marks our own choices.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from deform3d.models.deformable import DeformableAttention3D, cell_centres, reference_grid
from deform3d.models.embeddings import temporal_pool
from deform3d.models.layers import DropPath, Mlp, layer_norm
from deform3d.models.stride_attention import (JointStrideAttention, TemporalMerge,
                                              TemporalStrideAttention)

Dtype = Any


def cross_positions(batch: int, t: int, k: int):
  """Positions ``(B, T * K, 3)`` of the cross-modal tokens: image centre, frame time (ours)."""
  time = jnp.broadcast_to(cell_centres(t)[:, None, None], (t, k, 1))
  pos = jnp.concatenate([jnp.zeros((t, k, 2), jnp.float32), time], axis=-1)
  return jnp.broadcast_to(pos.reshape(1, t * k, 3), (batch, t * k, 3))


# The residual branches of a block (their drop paths), in the order of ``drop_noise``.
RESIDUALS = ("drop_rgb", "drop_cross", "drop_rgb_mlp", "drop_joint", "drop_temporal", "drop_mlp")


class _BlockBase(nn.Module):
  """Fields and sub-layer helpers shared by both block designs."""
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
  rgb_merge: bool
  dtype: Dtype
  rgb_query_pos: str = "cell"
  sampler_backward: str = "auto"
  # Initial LayerScale of the deformable attention's update of the cross-modal tokens (the path
  # from RGB into them); ``None``: ``layer_scale``. 0 starts the fusion tokens from pose alone.
  cross_rgb_scale: Any = None
  # A row of ``stride_attention.joint_plans`` (data when blocks are scanned) replacing the
  # static groups of ``joint_stride``; ``None``: the static groups.
  joint_plan: Any = None
  # ``(len(RESIDUALS), B)`` uniform draws for the drop paths (scanned blocks), or ``None``.
  drop_noise: Any = None
  # Sub-layer classes; fast.py's blocks replace them with their rewritten subclasses.
  Deformable = DeformableAttention3D
  JointAttention = JointStrideAttention
  TemporalAttention = TemporalStrideAttention

  def residual(self, name, y, deterministic):
    """Residual branch: per-channel LayerScale (CaiT) then drop path."""
    gated = name == "drop_cross" and self.cross_rgb_scale is not None
    scale = self.cross_rgb_scale if gated else self.layer_scale
    if self.layer_scale or gated:
      gamma = self.param(f"{name}_scale", nn.initializers.constant(scale), (y.shape[-1],))
      y = y * gamma.astype(y.dtype)
    noise = None if self.drop_noise is None else self.drop_noise[RESIDUALS.index(name)]
    return DropPath(self.drop_path, name=name)(y, deterministic=deterministic, noise=noise)

  def kw(self):
    return dict(attn_dropout=self.attn_dropout, proj_dropout=self.dropout, dtype=self.dtype)

  def deformable(self):
    return self.Deformable(self.num_heads, num_groups=self.num_groups,
                           offset_strides=tuple(self.offset_strides),
                           offset_range_factor=self.offset_range_factor,
                           sampler_backward=self.sampler_backward, name="cross_attn", **self.kw())

  def pose_layers(self, z, person_mask, deterministic):
    """Joint stride attention on ``z (B, T, 1 + P * J, C)`` (cross-attention token + the pose
    tokens of ``P`` persons, present ones marked by ``person_mask (B, P)``; ``None``: one)."""
    y = self.JointAttention(self.num_heads, window=self.joint_window, stride=self.joint_stride,
                            plan=self.joint_plan, name="joint_attn", **self.kw())(
                                layer_norm("norm_joint", self.dtype)(z), person_mask,
                                deterministic=deterministic)
    return self.residual("drop_joint", y, deterministic)

  def temporal_layers(self, z, deterministic):
    """Temporal stride attention, temporal merge and MLP on ``z (B, T, N, C)``. Scanned blocks
    get ``temporal_stride=1``: the model merges between them (``merge_in_block=False``)."""
    y = self.TemporalAttention(self.num_heads, window=self.temporal_window, name="temporal_attn",
                               **self.kw())(layer_norm("norm_temporal", self.dtype)(z),
                                            deterministic=deterministic)
    z = z + self.residual("drop_temporal", y, deterministic)
    z = TemporalMerge(self.temporal_stride, dtype=self.dtype, name="temporal_merge")(z)
    y = Mlp(int(z.shape[-1] * self.mlp_ratio), dropout=self.dropout, dtype=self.dtype,
            name="mlp")(layer_norm("norm_mlp", self.dtype)(z), deterministic=deterministic)
    return z + self.residual("drop_mlp", y, deterministic)


class Block(_BlockBase):
  """The paper's block: two modality streams fused through the cross-modal tokens.

  ``rgb (B, T, H, W, C)`` or ``None`` (pose-only), ``cross (B, T, K, C)``, ``pose (B, T, P * J, C)``
  (``P`` persons, ``person_mask (B, P)`` or ``None`` for one) -> the same streams, ``T`` reduced
  by ``temporal_stride``.

  1. 3D deformable attention: queries = RGB tokens and cross-modal tokens; keys/values = the
     tokens found by the 3D token search and the cross-modal tokens. RGB and cross-modal tokens
     are updated residually, then the RGB tokens pass their own MLP.
  2. Local joint stride attention over the cross-attention token (the mean of the frame's ``K``
     cross-modal tokens, ours) and the pose tokens; its update of the cross-attention token is
     added to each cross-modal token.
  3. Temporal stride attention over cross-modal and pose tokens, temporal merge (the RGB stream
     is merged with the same stride when ``rgb_merge``, ours), MLP. Scanned blocks merge
     between blocks instead (``Deform3DTransformer.merge_after``).
  """

  @nn.compact
  def __call__(self, rgb, cross, pose, pose_pos, person_mask=None, deterministic: bool = True):
    b, t, k, c = cross.shape
    if rgb is not None:
      _, tr, h, w, _ = rgb.shape
      x = layer_norm("norm_rgb", self.dtype)(rgb)
      m = layer_norm("norm_cross", self.dtype)(cross).reshape(b, t * k, c)
      grid = reference_grid((tr, h, w))                                # (x, y, t) cell centres
      if self.rgb_query_pos == "frame":  # ablation: no spatial position, like the cross tokens
        grid = grid * jnp.asarray([0.0, 0.0, 1.0])
      rgb_pos = jnp.broadcast_to(grid.reshape(1, tr * h * w, 3), (b, tr * h * w, 3))
      m_pos = cross_positions(b, t, k)
      y = self.deformable()(jnp.concatenate([x.reshape(b, tr * h * w, c), m], axis=1),
                            jnp.concatenate([rgb_pos, m_pos], axis=1), x, m, m_pos,
                            deterministic=deterministic)
      rgb = rgb + self.residual("drop_rgb", y[:, :tr * h * w].reshape(rgb.shape), deterministic)
      cross = cross + self.residual("drop_cross", y[:, tr * h * w:].reshape(cross.shape),
                                    deterministic)
      y = Mlp(int(c * self.mlp_ratio), dropout=self.dropout, dtype=self.dtype, name="rgb_mlp")(
          layer_norm("norm_rgb_mlp", self.dtype)(rgb), deterministic=deterministic)
      rgb = rgb + self.residual("drop_rgb_mlp", y, deterministic)

    y = self.pose_layers(jnp.concatenate([cross.mean(axis=2, keepdims=True), pose], axis=2),
                         person_mask, deterministic)
    cross, pose = cross + y[:, :, :1], pose + y[:, :, 1:]

    z = self.temporal_layers(jnp.concatenate([cross, pose], axis=2), deterministic)
    if rgb is not None and self.rgb_merge:
      _, tr, h, w, _ = rgb.shape
      rgb = TemporalMerge(self.temporal_stride, dtype=self.dtype, name="rgb_merge")(
          rgb.reshape(b, tr, h * w, c))
      rgb = rgb.reshape(b, rgb.shape[1], h, w, c)
    return rgb, z[:, :, :k], z[:, :, k:], pose_pos


class PooledBlock(_BlockBase):
  """The earlier design (ablation ``design="pooled"``): the RGB tokens are never updated.

  The cross token and the joint tokens of each frame are the deformable attention's queries (at
  the joints' image positions), the sampled tokens alone its keys/values, and the mean of a
  frame's ``1 + J`` outputs is added to its single cross token; then the same joint and temporal
  layers as ``Block``.
  """

  @nn.compact
  def __call__(self, rgb, cross, pose, pose_pos, person_mask=None, deterministic: bool = True):
    b, t, _, c = cross.shape
    z = jnp.concatenate([cross, pose], axis=2)                              # (B, T, 1 + J, C)
    n = z.shape[2]
    if rgb is not None:
      q = layer_norm("norm_cross", self.dtype)(z).reshape(b, t * n, c)
      q_pos = jnp.concatenate([cross_positions(b, t, 1).reshape(b, t, 1, 3), pose_pos], axis=2)
      y = self.deformable()(q, q_pos.reshape(b, t * n, 3), layer_norm("norm_rgb", self.dtype)(rgb),
                            pool_queries=n, deterministic=deterministic)  # (B, T, C)
      y = self.residual("drop_cross", y.reshape(b, t, 1, c), deterministic)
      z = jnp.concatenate([z[:, :, :1] + y, z[:, :, 1:]], axis=2)
    z = z + self.pose_layers(z, person_mask, deterministic)
    z = self.temporal_layers(z, deterministic)
    return rgb, z[:, :, :1], z[:, :, 1:], temporal_pool(pose_pos, self.temporal_stride)
