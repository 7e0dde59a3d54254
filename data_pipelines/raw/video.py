"""Video decoding with PyAV (FFmpeg): every frame, or the frames of a time window, as RGB uint8."""
from __future__ import annotations

import os
from typing import Optional, Tuple

import numpy as np

from data_pipelines.raw.common import RawFormatError


def read_video(path: str, start_s: Optional[float] = None,
               end_s: Optional[float] = None) -> Tuple[np.ndarray, float]:
  """Frames ``(F, H, W, 3)`` uint8 and the stream's frame rate. With ``start_s``/``end_s``, only
  frames whose presentation time lies in ``[start_s, end_s)`` (FineGYM element windows)."""
  import av  # imported here so pose-only readers work without it

  if not os.path.exists(path):
    raise RawFormatError(f"{path}: video file not found")
  try:
    with av.open(path) as container:
      if not container.streams.video:
        raise RawFormatError(f"{path}: no video stream")
      stream = container.streams.video[0]
      fps = float(stream.average_rate or stream.guessed_rate or 30.0)
      if start_s is not None and start_s > 1.0:
        container.seek(int((start_s - 1.0) / stream.time_base), stream=stream, backward=True)
      frames = []
      for frame in container.decode(stream):
        t = float(frame.pts * stream.time_base) if frame.pts is not None else None
        if t is not None and start_s is not None and t < start_s:
          continue
        if t is not None and end_s is not None and t >= end_s:
          break
        frames.append(frame.to_ndarray(format="rgb24"))
  except RawFormatError:
    raise
  except Exception as e:  # av.error.InvalidDataError and friends
    raise RawFormatError(f"{path}: unreadable video ({type(e).__name__}: {e})") from e
  if not frames:
    window = "" if start_s is None else f" in [{start_s:.2f}, {end_s:.2f}) s"
    raise RawFormatError(f"{path}: no decodable frames{window}")
  return np.stack(frames), fps


def write_video(path: str, frames: np.ndarray, fps: int = 30) -> None:
  """Writes uint8 ``(F, H, W, 3)`` frames as an MPEG-4 (.mp4/.avi) video (test fixtures)."""
  import av

  with av.open(path, "w") as container:
    stream = container.add_stream("mpeg4", rate=fps)
    stream.height, stream.width = frames.shape[1:3]
    stream.pix_fmt = "yuv420p"
    stream.bit_rate = 4_000_000
    for f in frames:
      for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f),
                                                             format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)
