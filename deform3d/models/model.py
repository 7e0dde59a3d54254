"""The cross-modal 3D deformable transformer (Kim, Ahn, Ko, ICCV 2023), plain form.

This file is the definition of the model (docs/model.md maps it to the paper and marks our own
choices). ``fast=True`` swaps in the subclasses of ``fast.py``: the same parameters and the same
function, computed faster (tested equal in tests/test_fast_paths.py).

Streams, per clip: RGB tokens ``(T, H, W, C)`` from the stem, pose tokens ``(T, J, C)`` and
``K`` cross-modal tokens per frame ``(T, K, C)``.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp

from deform3d.models.deformable import DeformableAttention3D, cell_centres, reference_grid
from deform3d.models.embeddings import PoseEmbed, RGBStem, temporal_pool
from deform3d.models.layers import DropPath, Mlp, layer_norm
from deform3d.models.stride_attention import (JointStrideAttention, TemporalMerge,
                                              TemporalStrideAttention, persons_present)

Dtype = Any
DESIGNS = ("paper", "pooled")

# Model sizes: the only place these numbers live. A config names one (``model.variant``) and may
# override single values; ``deform3d.models.build_model`` merges them. "paper" is our GPU-scale
# size for 224 px, 32-frame clips, not a size verified against the paper (docs/model.md).
_EMBEDDED = dict(embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0, stem_strides=(4, 2),
                 stem_temporal_stride=1, num_groups=2, offset_strides=(2, 2, 2), joint_window=4,
                 joint_strides=(1, 2, 1, 2), temporal_window=4, temporal_strides=(1, 2, 1, 2))
VARIANTS = {
    # Tests and quick checks: two blocks, one temporal merge.
    "tiny": dict(_EMBEDDED, embed_dim=32, depth=2, num_heads=2, joint_strides=(1, 2),
                 temporal_window=2, temporal_strides=(1, 2)),
    # The embedded dataset's default (48 px, 8 frames, CPU-sized).
    "embedded": _EMBEDDED,
    # Between the two, for benchmarks at 96 px, 16 frames.
    "medium": dict(_EMBEDDED, embed_dim=128),
    # The paper's datasets (224 px, 32 frames): stride-8 stem, frames paired, 8 blocks.
    "paper": dict(embed_dim=256, depth=8, num_heads=8, mlp_ratio=2.0, stem_strides=(8, 2),
                  stem_temporal_stride=2, num_groups=2, offset_strides=(2, 2, 2), joint_window=5,
                  joint_strides=(1, 2, 1, 2, 1, 2, 1, 2), temporal_window=4,
                  temporal_strides=(1, 1, 2, 1, 1, 2, 1, 1)),
}


def cross_positions(batch: int, t: int, k: int):
  """Positions ``(B, T * K, 3)`` of the cross-modal tokens: image centre, frame time (ours)."""
  time = jnp.broadcast_to(cell_centres(t)[:, None, None], (t, k, 1))
  pos = jnp.concatenate([jnp.zeros((t, k, 2), jnp.float32), time], axis=-1)
  return jnp.broadcast_to(pos.reshape(1, t * k, 3), (batch, t * k, 3))


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
  # Sub-layer classes; fast.py's blocks replace them with their rewritten subclasses.
  Deformable = DeformableAttention3D
  JointAttention = JointStrideAttention
  TemporalAttention = TemporalStrideAttention

  def residual(self, name, y, deterministic):
    """Residual branch: per-channel LayerScale (CaiT) then drop path."""
    if self.layer_scale:
      gamma = self.param(f"{name}_scale", nn.initializers.constant(self.layer_scale),
                         (y.shape[-1],))
      y = y * gamma.astype(y.dtype)
    return DropPath(self.drop_path, name=name)(y, deterministic=deterministic)

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
                            name="joint_attn", **self.kw())(
                                layer_norm("norm_joint", self.dtype)(z), person_mask,
                                deterministic=deterministic)
    return self.residual("drop_joint", y, deterministic)

  def temporal_layers(self, z, deterministic):
    """Temporal stride attention, temporal merge and MLP on ``z (B, T, N, C)``."""
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
     is merged with the same stride when ``rgb_merge``, ours), MLP.
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


class Deform3DTransformer(nn.Module):
  """RGB frames + pose keypoints -> class logits.

  Inputs: ``frames (B, T, H, W, 3)`` (float, normalized) and ``keypoints (B, T, J, D)`` of one
  person or ``(B, P, T, J, D)`` of ``P`` persons, whose first two channels are ``(x, y)`` in
  normalized image coordinates ``[-1, 1]`` (further channels, e.g. a confidence score, are
  embedded too). With ``P > 1`` a person whose scores (channel 2) are all 0 in the clip is absent
  (padding): the joint attention never attends to its joints (ours: docs/model.md); ``P = 1``
  is the one-person model exactly. Either modality can be switched off for ablations
  (``use_rgb=False`` ignores ``frames``; ``use_pose=False`` ignores ``keypoints``' values).

  ``design="paper"`` (default) uses ``Block``; ``"pooled"`` the earlier ``PooledBlock`` (one
  cross token, RGB never updated). The cross-modal tokens of the last block, averaged over time
  and tokens, feed the classifier. ``fast`` selects the rewritten modules of ``fast.py`` (same
  parameters, same function); ``remat`` recomputes each block's activations in the backward pass.
  Every attention sows its weights into ``intermediates`` (see ``deform3d.models.attention_maps``).
  """
  num_classes: int
  # Size (``VARIANTS``):
  embed_dim: int
  depth: int
  num_heads: int
  mlp_ratio: float
  stem_strides: Sequence[int]
  stem_temporal_stride: int
  num_groups: int
  offset_strides: Sequence[int]
  joint_window: int
  joint_strides: Sequence[int]
  temporal_window: int
  temporal_strides: Sequence[int]
  # Options:
  offset_range_factor: float = 2.0
  dropout: float = 0.0
  attn_dropout: float = 0.0
  drop_path: float = 0.1
  layer_scale: float = 0.1
  use_rgb: bool = True
  use_pose: bool = True
  design: str = "paper"
  num_cross_tokens: int = 1
  rgb_merge: bool = True
  rgb_query_pos: str = "cell"
  fast: bool = True
  remat: bool = False
  sampler_backward: str = "auto"
  dtype: Dtype = jnp.float32

  def _check(self, frames, keypoints):
    if not (self.use_rgb or self.use_pose):
      raise ValueError("Deform3DTransformer: at least one of use_rgb / use_pose must be True")
    if self.design not in DESIGNS:
      raise ValueError(f"Deform3DTransformer: design must be one of {DESIGNS}, got "
                       f"{self.design!r}")
    if self.rgb_query_pos not in ("cell", "frame"):
      raise ValueError("Deform3DTransformer: rgb_query_pos must be 'cell' or 'frame', got "
                       f"{self.rgb_query_pos!r}")
    if self.num_cross_tokens not in (1, 2):
      raise ValueError("Deform3DTransformer: num_cross_tokens must be 1 or 2, got "
                       f"{self.num_cross_tokens}")
    for name, seq in (("joint_strides", self.joint_strides),
                      ("temporal_strides", self.temporal_strides)):
      if len(seq) != self.depth:
        raise ValueError(f"Deform3DTransformer: {name} has {len(seq)} entries, depth is "
                         f"{self.depth}")
    # The clip's frame and joint counts come from the inputs (the model is initialised from the
    # data's shapes); keypoints are needed even with use_pose=False, for those counts.
    if keypoints is None or keypoints.ndim not in (4, 5):
      raise ValueError("Deform3DTransformer: keypoints (B, T, J, D) or (B, P, T, J, D) are "
                       f"required, got {None if keypoints is None else keypoints.shape}")
    bt = (keypoints.shape[0], keypoints.shape[-3])
    if self.use_rgb and (frames is None or frames.ndim != 5 or frames.shape[:2] != bt):
      raise ValueError(f"Deform3DTransformer: frames must be (B, T, H, W, 3) with (B, T) = "
                       f"{bt} of the keypoints, got {None if frames is None else frames.shape}")
    if keypoints.ndim == 5 and keypoints.shape[1] > 1 and self.design != "paper":
      raise ValueError(f"Deform3DTransformer: design={self.design!r} takes one person, got "
                       f"keypoints of {keypoints.shape[1]} (B, P, T, J, D) = {keypoints.shape}")
    return keypoints.shape[0]

  def block_class(self):
    if self.fast:
      from deform3d.models import fast  # the rewrites import this module
      cls = fast.FastBlock if self.design == "paper" else fast.FastPooledBlock
    else:
      cls = Block if self.design == "paper" else PooledBlock
    # Arguments: self, rgb, cross, pose, pose_pos, person_mask, deterministic (static).
    return nn.remat(cls, static_argnums=(6,)) if self.remat else cls

  @nn.compact
  def __call__(self, frames: Optional[jnp.ndarray], keypoints: Optional[jnp.ndarray], *,
               train: bool = False):
    b = self._check(frames, keypoints)
    if keypoints.ndim == 5 and keypoints.shape[1] == 1:
      keypoints = keypoints[:, 0]  # one person: the one-person model
    # Persons present in the clip (P > 1): any joint with a non-zero score in any frame.
    person_mask = None
    if keypoints.ndim == 5:
      person_mask = jnp.ones(keypoints.shape[:2], bool)
      if self.use_pose and keypoints.shape[-1] > 2:
        person_mask = persons_present(keypoints)
    c = self.embed_dim
    rgb = None
    if self.use_rgb:
      rgb = RGBStem(c, spatial_strides=self.stem_strides,
                    temporal_stride=self.stem_temporal_stride, dtype=self.dtype,
                    name="rgb_stem")(frames)
    pose = PoseEmbed(c, temporal_stride=self.stem_temporal_stride, use_coords=self.use_pose,
                     dtype=self.dtype, name="pose_embed")(keypoints)
    t = pose.shape[1]

    # Cross-modal tokens, K per frame: learned vectors; the first also gets a projection of the
    # frame's pooled RGB tokens (mean and max over space, ours), so that a small salient object
    # reaches the fusion tokens from the first step. Pose reaches them through the joint
    # attention. With K = 2 the cross-attention token is their mean (ours).
    k = self.num_cross_tokens if self.design == "paper" else 1
    cross = self.param("cross_token", nn.initializers.normal(0.02), (1, 1, k, c))
    cross = jnp.broadcast_to(cross.astype(self.dtype), (b, t, k, c))
    if rgb is not None:
      pooled = jnp.concatenate([rgb.mean(axis=(2, 3)), rgb.max(axis=(2, 3))], axis=-1)
      cross = cross.at[:, :, 0].add(nn.Dense(c, dtype=self.dtype, name="cross_init")(pooled))

    # Joint positions (x, y, time) for the pooled design's relative-position bias.
    pose_pos = None
    if self.design == "pooled":
      j = keypoints.shape[2]
      xy = jnp.zeros((b, t, j, 2), jnp.float32)
      if self.use_pose:
        xy = jnp.clip(temporal_pool(keypoints[..., :2].astype(jnp.float32),
                                    self.stem_temporal_stride), -1.0, 1.0)
      time = jnp.broadcast_to(cell_centres(t)[None, :, None, None], (b, t, j, 1))
      pose_pos = jnp.concatenate([xy, time], axis=-1)

    block_cls = self.block_class()
    for i in range(self.depth):
      rgb, cross, pose, pose_pos = block_cls(
          num_heads=self.num_heads, num_groups=self.num_groups,
          offset_strides=tuple(self.offset_strides), offset_range_factor=self.offset_range_factor,
          joint_window=self.joint_window, joint_stride=self.joint_strides[i],
          temporal_window=self.temporal_window, temporal_stride=self.temporal_strides[i],
          mlp_ratio=self.mlp_ratio, dropout=self.dropout, attn_dropout=self.attn_dropout,
          drop_path=self.drop_path * i / max(self.depth - 1, 1), layer_scale=self.layer_scale,
          rgb_merge=self.rgb_merge, rgb_query_pos=self.rgb_query_pos,
          sampler_backward=self.sampler_backward, dtype=self.dtype, name=f"block{i}")(
              rgb, cross, pose, pose_pos, person_mask, not train)

    cls = layer_norm("norm_out", self.dtype)(cross.mean(axis=(1, 2)))
    cls = nn.Dropout(self.dropout)(cls, deterministic=not train)
    return nn.Dense(self.num_classes, dtype=jnp.float32, kernel_init=nn.initializers.zeros,
                    name="head")(cls)
