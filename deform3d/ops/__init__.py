"""Numerical ops used by the deform3d models (no TensorFlow here)."""
from deform3d.ops.sampling import grid_sample_3d

__all__ = ["grid_sample_3d"]
