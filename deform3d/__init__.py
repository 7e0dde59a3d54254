"""deform3d: cross-modal 3D deformable transformer for action recognition (JAX/Flax)."""

__version__ = "0.1.0"
