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
import jax
import jax.numpy as jnp

from deform3d.models import fast
from deform3d.pixels import normalize_frames
from deform3d.models.blocks import (RESIDUALS, Block, PooledBlock,  # noqa: F401 (re-export)
                                    cross_positions)
from deform3d.models.deformable import cell_centres
from deform3d.models.embeddings import PoseEmbed, RGBStem, temporal_pool
from deform3d.models.layers import layer_norm
from deform3d.models.stride_attention import TemporalMerge, joint_plans, persons_present

Dtype = Any
DESIGNS = ("paper", "pooled")
ATTENTION_KERNELS = ("xla", "pallas", "auto")
CROSS_INITS = ("rgb", "rgb_pose")

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


class Deform3DTransformer(nn.Module):
  """RGB frames + pose keypoints -> class logits.

  Inputs: ``frames (B, T, H, W, 3)`` (uint8 pixels, normalized inside; or float, already
  normalized: ``deform3d.pixels``) and ``keypoints (B, T, J, D)`` of one
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

  Block structure (``scan``): ``scan=False`` (default) is a Python loop over ``block{i}``, each
  block merging the streams in time before its MLP when ``temporal_strides[i] > 1`` (the
  definition; every checkpoint before ``scan`` existed). ``scan=True`` merges *between* blocks
  instead (``temporal_merge{i}``, ``rgb_merge{i}`` after block ``i``; the MLP runs before the
  merge, ours): the blocks between two merges form a stage of identical blocks that differ only
  in data, the drop-path rate and the joint stride (``joint_plans``' group tables), and each
  stage is one ``nn.scan`` over parameters stacked on a leading layer axis (``stage{s}/block``).
  ``merge_in_block=False`` with ``scan=False`` is the loop form of that function; the two
  layouts convert into each other (``deform3d.models.convert``), tested equal.
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
  # The first cross-modal token's start: "rgb" (the frame's pooled RGB tokens) or "rgb_pose"
  # (also the frame's pooled pose tokens); both ours, docs/model.md.
  cross_init: str = "rgb"
  # Scale of the cross_init projections' initial weights (1: lecun normal; 0: zeros; an
  # initialization choice only, the parameters are the same).
  cross_init_scale: float = 1.0
  pose_norm: bool = False  # pose features in body-size units and LayerNormed tokens (ours)
  # Initial LayerScale of the RGB -> cross-modal token update in each block (``None``:
  # ``layer_scale``); with ``cross_init_scale=0`` too, the fusion tokens start from pose alone.
  cross_rgb_scale: Optional[float] = None
  fast: bool = True
  remat: bool = False
  scan: bool = False
  merge_in_block: Optional[bool] = None  # None: not scan
  sampler_backward: str = "auto"
  # The deformable attention's bias + softmax: "xla" (the modules' own ops), "pallas" (one fused
  # kernel, ops/fused_attention.py, on every platform: interpret mode on CPU; needs fast=True),
  # "auto" (the kernel where the program is lowered for GPU or TPU, the same op in XLA ops for
  # CPU; the XLA modules with fast=False or attn_dropout > 0). docs/accelerators.md.
  attention_kernel: str = "xla"
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
    if self.cross_init not in CROSS_INITS:
      raise ValueError(f"Deform3DTransformer: cross_init must be one of {CROSS_INITS}, got "
                       f"{self.cross_init!r}")
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
    if self.scan and self.merges_in_block:
      raise ValueError("Deform3DTransformer: merge_in_block=True (the earlier block order) runs "
                       "as a loop only: set scan=False")
    if keypoints.ndim == 5 and keypoints.shape[1] > 1 and self.design != "paper":
      raise ValueError(f"Deform3DTransformer: design={self.design!r} takes one person, got "
                       f"keypoints of {keypoints.shape[1]} (B, P, T, J, D) = {keypoints.shape}")
    return keypoints.shape[0]

  @property
  def merges_in_block(self) -> bool:
    """Whether each block merges in time before its MLP (the loop's order; ``merge_in_block``,
    by default ``not scan``)."""
    return (not self.scan) if self.merge_in_block is None else self.merge_in_block

  @property
  def fused_attention(self) -> bool:
    """Whether the deformable attention runs as the fused Pallas kernel (``attention_kernel``)."""
    if self.attention_kernel not in ATTENTION_KERNELS:
      raise ValueError(f"Deform3DTransformer: attention_kernel must be one of "
                       f"{ATTENTION_KERNELS}, got {self.attention_kernel!r}")
    if self.attention_kernel == "auto":
      # The fused op, which picks per platform when lowered (kernel on GPU and TPU, its XLA
      # form on CPU); the XLA modules where the kernel cannot serve (no fast path, dropout
      # inside the attention).
      return self.fast and not self.attn_dropout
    if self.attention_kernel == "pallas" and not self.fast:
      raise ValueError("Deform3DTransformer: attention_kernel='pallas' is a rewrite of the fast "
                       "modules: set fast=True")
    return self.attention_kernel == "pallas"

  def attention_path(self, platform: str) -> str:
    """What computes the deformable attention when the model runs on ``platform`` (a device's
    ``platform``: ``cpu``, ``gpu``, ``tpu``), after ``attention_kernel="auto"`` has chosen."""
    if not self.fused_attention:
      return f"XLA ops ({'fast' if self.fast else 'plain'} modules, " \
             f"attention_kernel={self.attention_kernel})"
    if platform in ("gpu", "cuda", "rocm"):
      return f"fused Pallas kernel, Triton (attention_kernel={self.attention_kernel})"
    if platform == "tpu":
      return f"fused Pallas kernel, Mosaic TPU (attention_kernel={self.attention_kernel})"
    if self.attention_kernel == "auto":
      return "the fused op's XLA form (attention_kernel=auto on a CPU)"
    return "fused Pallas kernel in interpret mode (attention_kernel=pallas on a CPU: slow)"

  def block_class(self):
    if self.fused_attention and self.attention_kernel == "auto":
      cls = fast.AutoBlock if self.design == "paper" else fast.AutoPooledBlock
    elif self.fused_attention:
      cls = fast.FusedBlock if self.design == "paper" else fast.FusedPooledBlock
    elif self.fast:
      cls = fast.FastBlock if self.design == "paper" else fast.FastPooledBlock
    else:
      cls = Block if self.design == "paper" else PooledBlock
    # Arguments: self, rgb, cross, pose, pose_pos, person_mask, deterministic (static).
    return nn.remat(cls, static_argnums=(6,)) if self.remat else cls

  def stages(self):
    """The blocks of each stage, ``[[0, 1], [2, 3]]`` for temporal strides ``(1, 2, 1, 2)``:
    a stage ends after each block that is followed by a temporal merge."""
    return stages(self.temporal_strides, self.merges_in_block)

  def block_kwargs(self, i: int) -> dict:
    """Block ``i``'s settings (its drop-path rate and joint stride included)."""
    return dict(
        num_heads=self.num_heads, num_groups=self.num_groups,
        offset_strides=tuple(self.offset_strides), offset_range_factor=self.offset_range_factor,
        joint_window=self.joint_window, joint_stride=self.joint_strides[i],
        temporal_window=self.temporal_window,
        temporal_stride=self.temporal_strides[i] if self.merges_in_block else 1,
        mlp_ratio=self.mlp_ratio, dropout=self.dropout, attn_dropout=self.attn_dropout,
        drop_path=self.drop_path * i / max(self.depth - 1, 1), layer_scale=self.layer_scale,
        cross_rgb_scale=self.cross_rgb_scale,
        rgb_merge=self.rgb_merge, rgb_query_pos=self.rgb_query_pos,
        sampler_backward=self.sampler_backward, dtype=self.dtype)

  def merge_after(self, i: int, rgb, cross, pose, pose_pos):
    """The temporal merge after block ``i`` (none when its stride is 1 or it merged itself)."""
    stride = self.temporal_strides[i]
    if stride == 1 or self.merges_in_block:
      return rgb, cross, pose, pose_pos
    k = cross.shape[2]
    z = TemporalMerge(stride, dtype=self.dtype, name=f"temporal_merge{i}")(
        jnp.concatenate([cross, pose], axis=2))
    if rgb is not None and self.rgb_merge:
      b, tr, h, w, c = rgb.shape
      rgb = TemporalMerge(stride, dtype=self.dtype, name=f"rgb_merge{i}")(
          rgb.reshape(b, tr, h * w, c))
      rgb = rgb.reshape(b, rgb.shape[1], h, w, c)
    if pose_pos is not None:
      pose_pos = temporal_pool(pose_pos, stride)
    return rgb, z[:, :, :k], z[:, :, k:], pose_pos

  def run_blocks(self, streams, person_mask, num_joints: int, deterministic: bool):
    """All blocks and the merges between them on ``streams = (rgb, cross, pose, pose_pos)``."""
    block_cls = self.block_class()
    if not self.scan:
      for i in range(self.depth):
        streams = block_cls(**self.block_kwargs(i), name=f"block{i}")(
            *streams, person_mask, deterministic)
        streams = self.merge_after(i, *streams)
      return streams
    persons = 1 if person_mask is None else person_mask.shape[1]
    batch = streams[1].shape[0]
    for s, blocks in enumerate(self.stages()):
      kwargs = self.block_kwargs(blocks[0])
      kwargs.pop("drop_path")
      rates = noise = None
      if not deterministic and self.drop_path > 0:
        # Each block's rate, and the stage's drop-path draws made here, outside the loop.
        rates = jnp.asarray([self.block_kwargs(i)["drop_path"] for i in blocks], jnp.float32)
        noise = jax.random.uniform(self.make_rng("dropout"),
                                   (len(blocks), len(RESIDUALS), batch))
      plans = jnp.asarray(joint_plans(num_joints, self.joint_window,
                                      [self.joint_strides[i] for i in blocks], persons))
      scanned = nn.scan(_ScanBody, variable_axes={"params": 0, "intermediates": 0},
                        split_rngs={"params": True, "dropout": True},
                        in_axes=(0, 0, nn.broadcast), length=len(blocks))
      streams, _ = scanned(block_cls, tuple(sorted(kwargs.items())), deterministic,
                           name=f"stage{s}")(streams, (rates, noise), plans, person_mask)
      streams = self.merge_after(blocks[-1], *streams)
    return streams

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
      frames = normalize_frames(frames)  # uint8 pixels from the host, normalized here
      rgb = RGBStem(c, spatial_strides=self.stem_strides,
                    temporal_stride=self.stem_temporal_stride, dtype=self.dtype,
                    name="rgb_stem")(frames)
    pose = PoseEmbed(c, temporal_stride=self.stem_temporal_stride, use_coords=self.use_pose,
                     normalize=self.pose_norm,
                     dtype=self.dtype, name="pose_embed")(keypoints)
    t = pose.shape[1]

    # Cross-modal tokens, K per frame: learned vectors; the first also gets a projection of the
    # frame's pooled RGB tokens (mean and max over space, ours), so that a small salient object
    # reaches the fusion tokens from the first step. Pose reaches them through the joint
    # attention, and with cross_init="rgb_pose" also from the start: a projection of the frame's
    # pooled pose tokens (mean and max over the joints of the persons present, ours). With
    # K = 2 the cross-attention token is their mean (ours).
    k = self.num_cross_tokens if self.design == "paper" else 1
    cross = self.param("cross_token", nn.initializers.normal(0.02), (1, 1, k, c))
    cross = jnp.broadcast_to(cross.astype(self.dtype), (b, t, k, c))
    init = nn.initializers.zeros
    if self.cross_init_scale:
      init = nn.initializers.variance_scaling(self.cross_init_scale ** 2, "fan_in",
                                              "truncated_normal")
    if rgb is not None:
      pooled = jnp.concatenate([rgb.mean(axis=(2, 3)), rgb.max(axis=(2, 3))], axis=-1)
      cross = cross.at[:, :, 0].add(nn.Dense(c, dtype=self.dtype, kernel_init=init,
                                             name="cross_init")(pooled))
    if self.cross_init == "rgb_pose" and self.use_pose:
      cross = cross.at[:, :, 0].add(nn.Dense(c, dtype=self.dtype, kernel_init=init,
                                             name="cross_init_pose")(
          pooled_pose(pose, person_mask, keypoints.shape[-2])))

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

    rgb, cross, pose, pose_pos = self.run_blocks((rgb, cross, pose, pose_pos), person_mask,
                                                 keypoints.shape[-2], not train)

    cls = layer_norm("norm_out", self.dtype)(cross.mean(axis=(1, 2)))
    cls = nn.Dropout(self.dropout)(cls, deterministic=not train)
    return nn.Dense(self.num_classes, dtype=jnp.float32, kernel_init=nn.initializers.zeros,
                    name="head")(cls)


def pooled_pose(pose, person_mask, num_joints: int):
  """Pose tokens ``(B, T, P * J, C)`` -> ``(B, T, 2 C)``: mean and max over the joints of the
  persons present (``person_mask (B, P)``; ``None``: all)."""
  if person_mask is None:
    return jnp.concatenate([pose.mean(axis=2), pose.max(axis=2)], axis=-1)
  present = jnp.repeat(person_mask, num_joints, axis=1)[:, None, :, None]  # (B, 1, P * J, 1)
  count = jnp.maximum(present.sum(axis=2), 1).astype(pose.dtype)
  mean = jnp.where(present, pose, 0).sum(axis=2) / count
  big_negative = jnp.asarray(jnp.finfo(pose.dtype).min, pose.dtype)
  peak = jnp.where(present, pose, big_negative).max(axis=2)
  peak = jnp.where(present.any(axis=2), peak, 0)
  return jnp.concatenate([mean, peak], axis=-1)


def stages(temporal_strides: Sequence[int], merge_in_block: bool = False) -> list:
  """Block indices of each stage: a stage ends after each block followed by a temporal merge
  (with ``merge_in_block`` every block is its own stage: the merges are inside the blocks)."""
  if merge_in_block:
    return [[i] for i in range(len(temporal_strides))]
  out, current = [], []
  for i, stride in enumerate(temporal_strides):
    current.append(i)
    if stride > 1:
      out.append(current)
      current = []
  return out + ([current] if current else [])


class _ScanBody(nn.Module):
  """One block as an ``nn.scan`` step: carry ``(rgb, cross, pose, pose_pos)``, scanned
  ``((drop-path rate, drop-path draws) or Nones, joint plan)``, broadcast ``person_mask``."""
  block_cls: Any
  block_kwargs: tuple
  deterministic: bool

  @nn.compact
  def __call__(self, streams, drop, plan, person_mask):
    rate, noise = drop
    block = self.block_cls(**dict(self.block_kwargs), drop_path=0.0 if rate is None else rate,
                           drop_noise=noise, joint_plan=plan, name="block")
    return block(*streams, person_mask, self.deterministic), None
