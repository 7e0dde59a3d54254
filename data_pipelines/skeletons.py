"""Joint layouts: names and the left/right pairs a horizontal flip swaps."""
import numpy as np

COCO17 = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
          "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip",
          "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle")
COCO17_BONES = ((0, 1), (0, 2), (1, 3), (2, 4), (5, 6), (5, 7), (7, 9), (6, 8), (8, 10), (5, 11),
                (6, 12), (11, 12), (11, 13), (13, 15), (12, 14), (14, 16))

PENN13 = ("head", "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist",
          "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
          "right_ankle")

LAYOUTS = {"coco17": COCO17, "penn13": PENN13}


def flip_permutation(names) -> np.ndarray:
  """Index permutation that swaps every ``left_*`` joint with its ``right_*`` twin."""
  index = {n: i for i, n in enumerate(names)}
  perm = np.arange(len(names))
  for i, n in enumerate(names):
    for a, b in (("left", "right"), ("right", "left")):
      if a in n:
        twin = n.replace(a, b)
        if twin not in index:
          raise ValueError(f"flip_permutation: joint {n!r} has no twin {twin!r}")
        perm[i] = index[twin]
  return perm
