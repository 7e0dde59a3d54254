"""Shared pieces of the raw-format readers: errors, frame-rate and size resampling, person choice."""
from __future__ import annotations

import dataclasses
from typing import Optional, Tuple

import numpy as np
from PIL import Image


class RawFormatError(ValueError):
  """A raw file that cannot be read as its format says; the message names the file and field."""


@dataclasses.dataclass(frozen=True)
class FrameOptions:
  """How frames are stored: ``short_side`` pixels (None keeps the source size) and ``fps``
  frames per second (None keeps every source frame)."""
  short_side: Optional[int] = 256
  fps: Optional[float] = None


def resample_indices(num_frames: int, src_fps: float, fps: Optional[float]) -> np.ndarray:
  """Source frame index for each output frame when converting ``src_fps`` to ``fps``.

  Output frame ``k`` shows the source frame whose interval contains time ``k / fps``:
  ``floor(k * src_fps / fps)``; never upsamples (``fps >= src_fps`` keeps every frame).
  """
  if fps is None or fps >= src_fps:
    return np.arange(num_frames)
  n_out = max(1, int(np.floor(num_frames * fps / src_fps)))
  return np.minimum(np.floor(np.arange(n_out) * src_fps / fps).astype(np.int64), num_frames - 1)


def target_size(height: int, width: int, short_side: Optional[int]) -> Tuple[int, int]:
  if short_side is None:
    return height, width
  s = short_side / min(height, width)
  return max(1, int(round(height * s))), max(1, int(round(width * s)))


def resize_frames(frames: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
  """(F, H, W, 3) uint8 -> (F, h, w, 3) uint8 (bilinear, antialiased by PIL)."""
  h, w = size
  if frames.shape[1:3] == (h, w):
    return frames
  return np.stack([np.asarray(Image.fromarray(f).resize((w, h), Image.BILINEAR))
                   for f in frames])


def scale_keypoints(keypoints: np.ndarray, src_hw: Tuple[int, int],
                    dst_hw: Tuple[int, int]) -> np.ndarray:
  """Pixel ``(x, y)`` of a ``src_hw`` image -> pixels of the resized ``dst_hw`` image (pixel
  centres stay centres: ``x' = (x + 0.5) * w'/w - 0.5``)."""
  sy, sx = dst_hw[0] / src_hw[0], dst_hw[1] / src_hw[1]
  out = np.array(keypoints, np.float32, copy=True)
  out[..., 0] = (out[..., 0] + 0.5) * sx - 0.5
  out[..., 1] = (out[..., 1] + 0.5) * sy - 0.5
  return out


def align_length(keypoints: np.ndarray, scores: np.ndarray, num_frames: int):
  """Pose sequences whose length differs from the video's are mapped to the video frames by
  nearest relative time (frame ``i`` of ``F`` takes pose ``floor(i * P / F)``)."""
  p = keypoints.shape[0]
  if p == num_frames:
    return keypoints, scores
  idx = np.minimum((np.arange(num_frames) * p) // num_frames, p - 1)
  return keypoints[idx], scores[idx]


def select_person(keypoints: np.ndarray, scores: np.ndarray) -> int:
  """Main person of ``(M, T, J, 2)`` keypoints with ``(M, T, J)`` scores: the largest total
  score (how long and how confidently they were seen), ties broken by the largest motion."""
  total = scores.sum(axis=(1, 2))
  present = scores > 0
  motion = np.zeros(len(total))
  for m in range(len(total)):
    pts = keypoints[m][present[m]]
    motion[m] = float(pts.std(axis=0).sum()) if len(pts) else 0.0
  order = np.lexsort((-motion, -np.round(total, 4)))
  return int(order[0])


def finish(frames: np.ndarray, keypoints: np.ndarray, scores: np.ndarray, src_fps: float,
           options: FrameOptions):
  """Applies ``options`` to decoded frames and their per-frame keypoints (pixels of the source
  frames): frame-rate resampling, resize, keypoint rescale. Missing joints keep ``(0, 0)``."""
  keypoints, scores = align_length(keypoints, scores, frames.shape[0])
  idx = resample_indices(frames.shape[0], src_fps, options.fps)
  frames, keypoints, scores = frames[idx], keypoints[idx], scores[idx]
  size = target_size(frames.shape[1], frames.shape[2], options.short_side)
  kp = scale_keypoints(keypoints, frames.shape[1:3], size)
  kp[scores <= 0] = 0.0
  return resize_frames(frames, size), kp, scores.astype(np.float32)
