"""Flax (linen) modules of the cross-modal 3D deformable transformer.

The plain modules (``model.py``, ``deformable.py``, ``stride_attention.py``, ``layers.py``,
``embeddings.py``) are the definition; ``fast.py`` holds their speed rewrites, selected by
``Deform3DTransformer(fast=True)``.
"""
from deform3d.models.deformable import DeformableAttention3D
from deform3d.models.embeddings import PoseEmbed, RGBStem
from deform3d.models.layers import DropPath, Mlp, MultiHeadAttention
from deform3d.models.model import Block, Deform3DTransformer, PooledBlock
from deform3d.models.stride_attention import (JointStrideAttention, TemporalMerge,
                                              TemporalStrideAttention, joint_groups,
                                              person_groups)
from deform3d.models.factory import attention_maps, build_model, resolved_config

__all__ = [
    "DeformableAttention3D", "PoseEmbed", "RGBStem", "DropPath", "Mlp", "MultiHeadAttention",
    "Block", "PooledBlock", "Deform3DTransformer", "JointStrideAttention", "TemporalMerge",
    "TemporalStrideAttention", "joint_groups", "person_groups", "attention_maps", "build_model",
    "resolved_config",
]
