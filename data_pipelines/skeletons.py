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

# Kinect v2 (NTU RGB+D), joints 1..25 of the .skeleton files in order.
NTU25 = ("spine_base", "spine_mid", "neck", "head", "left_shoulder", "left_elbow", "left_wrist",
         "left_hand", "right_shoulder", "right_elbow", "right_wrist", "right_hand", "left_hip",
         "left_knee", "left_ankle", "left_foot", "right_hip", "right_knee", "right_ankle",
         "right_foot", "spine_shoulder", "left_hand_tip", "left_thumb", "right_hand_tip",
         "right_thumb")
NTU25_BONES = ((0, 1), (1, 20), (20, 2), (2, 3), (20, 4), (4, 5), (5, 6), (6, 7), (7, 21),
               (7, 22), (20, 8), (8, 9), (9, 10), (10, 11), (11, 23), (11, 24), (0, 12),
               (12, 13), (13, 14), (14, 15), (0, 16), (16, 17), (17, 18), (18, 19))
PENN13_BONES = ((0, 1), (0, 2), (1, 3), (3, 5), (2, 4), (4, 6), (1, 7), (2, 8), (7, 8), (7, 9),
                (9, 11), (8, 10), (10, 12))
LAYOUTS["ntu25"] = NTU25
BONES = {"coco17": COCO17_BONES, "ntu25": NTU25_BONES, "penn13": PENN13_BONES}
