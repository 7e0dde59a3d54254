"""Pixel statistics shared by the input pipeline (host) and the model (device); NumPy only.

Frames travel from the host as uint8 (4x fewer bytes than float32) and are normalized inside
the jitted step (``normalize_frames``); float frames are taken as already normalized.
"""
import numpy as np

# ImageNet's channel mean and standard deviation, in pixel units (0..255).
MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
STD = np.array([0.229, 0.224, 0.225], np.float32) * 255


def normalize_frames(frames):
  """uint8 pixels ``(..., 3)`` (a NumPy or JAX array) -> ``(pixels - MEAN) / STD`` in float32;
  frames of any other dtype are returned as they are (already normalized)."""
  if frames.dtype != np.uint8:
    return frames
  return normalize_pixels(frames.astype(np.float32))


def normalize_pixels(pixels):
  """Float pixel values ``(..., 3)`` in ``[0, 255]`` -> ``(pixels - MEAN) / STD``."""
  return (pixels - MEAN) / STD
