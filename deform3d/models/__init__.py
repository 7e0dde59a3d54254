"""Flax (linen) modules of the cross-modal 3D deformable transformer."""
from deform3d.models.deformable import DeformableAttention3D, DepthwisePatchConv
from deform3d.models.embeddings import PoseEmbed, RGBStem
from deform3d.models.layers import DropPath, Mlp, MultiHeadAttention
from deform3d.models.model import Deform3DBlock, Deform3DTransformer
from deform3d.models.stride_attention import (JointStrideAttention, TemporalMerge,
                                              TemporalStrideAttention, joint_groups)
from deform3d.models.factory import attention_maps, build_model

__all__ = [
    "DeformableAttention3D", "DepthwisePatchConv", "PoseEmbed", "RGBStem", "DropPath", "Mlp", "MultiHeadAttention",
    "Deform3DBlock", "Deform3DTransformer", "JointStrideAttention", "TemporalMerge",
    "TemporalStrideAttention", "joint_groups", "attention_maps", "build_model",
]
